"""Errors the CLI turns into one clear line on stderr (never a traceback unless --debug)."""


class MixaError(Exception):
    """A failure the user can act on (missing file, unreachable hub, corrupt checkpoint). Exit 1."""
    exit_code = 1


class UsageError(MixaError):
    """Bad input: unknown model or kind, value out of range, wrong option combination. Exit 2."""
    exit_code = 2
