from . import dcgan, mlp, stylegan  # noqa: F401
