"""Errors the user can fix. The CLI prints them as one line and exits with code 2."""


class PrunegreedyError(Exception):
    """Base class: a problem with the user's input, not a bug."""


class ConfigError(PrunegreedyError):
    pass


class DataError(PrunegreedyError):
    pass


class RunError(PrunegreedyError):
    """A run folder that is missing, incomplete, taken, or tampered with."""


class SpecError(PrunegreedyError):
    """An architecture spec (JSON) that does not describe a buildable model."""


class ExportError(PrunegreedyError):
    """An export that cannot be made, read or trusted: missing/damaged file, absent extra, output mismatch."""
