from . import adaptive, alternate, skip_d  # noqa: F401
