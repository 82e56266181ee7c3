from . import hinge, least_squares, minimax, nonsaturating, relativistic, rpgan, wgan_gp  # noqa: F401
