from . import dcgan, mlp, msggan, progan, r3gan, stylegan  # noqa: F401
