"""Errors a user can act on. The CLI prints their message on one line and exits non-zero."""


class FedmolError(Exception):
    """Base class: an error whose message tells the user what went wrong and how to fix it."""

    exit_code = 2


class InputError(FedmolError):
    """Bad user input: a missing file, an unknown column, an empty file, a malformed key."""


class ConfigError(FedmolError):
    """An unknown or invalid configuration key or value."""


class StoreError(FedmolError):
    """A site store that is missing, incomplete or written by an incompatible version."""


class TrainingDiverged(FedmolError):
    """Training produced NaN or infinite weights (usually a learning rate too high for the data)."""
