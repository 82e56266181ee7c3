"""User-facing errors.

Anything a user can cause (bad recipe, unknown plugin, missing shard) raises a ``GanforgeError`` whose message is
one line naming the culprit. The CLI prints it without a traceback and exits non-zero; genuine bugs still show a
traceback.
"""


class GanforgeError(Exception):
    """An error caused by user input; its message is a single line that names the culprit."""

    exit_code = 2


class ConfigError(GanforgeError):
    """A recipe or override is invalid (message names the file and dotted path)."""


class PluginError(GanforgeError):
    """A plugin is unknown, duplicated, or was given options it does not take."""


class DataError(GanforgeError):
    """A dataset, URL pattern or shard cannot be used (message names it)."""
