from . import alternate  # noqa: F401
