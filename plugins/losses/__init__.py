from . import nonsaturating  # noqa: F401
