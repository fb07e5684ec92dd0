"""Exceptions that the CLI turns into one-line messages (no traceback)."""


class SpecQuantError(Exception):
    """An expected failure: bad file, unsupported model, ... (exit code 1)."""


class UsageError(SpecQuantError):
    """A bad command line: absurd flag values, missing arguments, ... (exit code 2)."""


class FormatError(SpecQuantError):
    """A file that is not a valid (SpecQuant) GGUF file: corrupt, truncated, wrong type."""
