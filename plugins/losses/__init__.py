from . import hinge, least_squares, minimax, nonsaturating, relativistic, wgan_gp  # noqa: F401
