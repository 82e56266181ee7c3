from . import dcgan, mlp, msggan, progan, projected, r3gan, stylegan  # noqa: F401
