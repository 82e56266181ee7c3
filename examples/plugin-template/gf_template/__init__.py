"""ganforge-plugin-template: one plugin of each of three kinds, to copy.

ganforge imports this package through the ``ganforge.plugins`` entry point (pyproject.toml); importing the
modules below runs their ``@register`` decorators, which is all registration takes.
"""

from . import architecture, balancer, loss  # noqa: F401  (imported for their registrations)
