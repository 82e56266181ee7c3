"""ganforge: a distributed, plugin-based GAN trainer on Hugging Face Accelerate and webdataset."""

from .errors import ConfigError, DataError, GanforgeError, PluginError
from .registry import build, register

__version__ = "0.1.0"
__all__ = ["register", "build", "GanforgeError", "ConfigError", "PluginError", "DataError", "__version__",
           "load_generator", "Generator"]


def __getattr__(name):  # load_generator / Generator import torch: only when asked for (`import ganforge` stays cheap)
    if name in ("load_generator", "Generator"):
        from .apps import export

        return getattr(export, name)
    raise AttributeError(f"module 'ganforge' has no attribute {name!r}")
