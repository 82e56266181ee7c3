"""Only what pyproject.toml cannot say: the built-in plugins live in the source folder ``plugins/`` but install
under the import name ``ganforge_plugins``, so they never collide with another distribution's top-level
``plugins`` package in site-packages."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["ganforge", "ganforge.*"])
    + ["ganforge_plugins" + p[len("plugins"):] for p in find_packages(include=["plugins", "plugins.*"])],
    package_dir={"ganforge_plugins": "plugins"},
)
