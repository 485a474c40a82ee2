"""Errors with a message a user can act on; the CLIs print them as one line."""


class UserError(Exception):
    """Bad input, a missing file or model, a recipe mistake: say what and how to fix it."""


class ModelNotFoundError(UserError):
    """A model is neither a local path nor reachable; the message names what to download and where."""


def first_line(err: BaseException, limit: int = 300) -> str:
    """An exception's first line (its type when it has no text): libraries' messages run to many lines."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:limit]


def unreadable_weights(path: object, err: BaseException) -> UserError:
    """A weights file that is truncated, corrupt or not weights at all (safetensors, pickle and zip
    readers each raise their own type), named in one line."""
    return UserError(f"weights file {path} does not load ({type(err).__name__}: {first_line(err)})")
