from . import dcgan, mlp, msggan, progan, stylegan  # noqa: F401
