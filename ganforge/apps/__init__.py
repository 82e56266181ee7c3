"""Applications on top of the engine's public API (the mode-collapse lab, ...)."""
