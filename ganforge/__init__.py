"""ganforge: a distributed, plugin-based GAN trainer on Hugging Face Accelerate and webdataset."""

from .errors import ConfigError, DataError, GanforgeError, PluginError
from .registry import build, register

__version__ = "0.1.0"
__all__ = ["register", "build", "GanforgeError", "ConfigError", "PluginError", "DataError", "__version__"]
