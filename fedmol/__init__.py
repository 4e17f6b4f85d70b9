"""fedmol core: what every side (datasets, models, client, server) shares.

Kept small on purpose: errors, the CLI entry point, and (later) the wire keys of messages.
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
