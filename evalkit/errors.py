"""Errors with a message a user can act on; the CLIs print them as one line."""


class UserError(Exception):
    """Bad input, a missing file or model, a recipe mistake: say what and how to fix it."""


class ModelNotFoundError(UserError):
    """A model is neither a local path nor reachable; the message names what to download and where."""
