"""User-facing errors: the CLI prints them as one line and exits non-zero, never a traceback."""


class SkelactError(Exception):
    """An error caused by the user's input (file, config, arguments), reported as one line."""


class BadSample(SkelactError):
    """One clip of a raw dataset is unusable; preparers record it as skipped (or abort with --strict)."""
