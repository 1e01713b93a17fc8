"""Exceptions dipgo raises for bad input: each message names the problem and the fix."""


class DipgoError(ValueError):
    """Base class: bad input that a user can fix (the CLI prints these without a traceback)."""


class ModelNotFoundError(DipgoError):
    """A MODEL argument that names nothing loadable."""
