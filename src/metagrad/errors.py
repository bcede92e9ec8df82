"""Errors a user can cause and fix. The CLI prints them as one line and exits with status 2."""


class MetagradError(Exception):
    """Base class: a problem with the user's input (config, data, checkpoint), not a bug."""


class ConfigError(MetagradError, ValueError):
    """A bad preset, key or value."""


class DataError(MetagradError):
    """Missing, corrupt or unsuitable data."""


class CheckpointError(MetagradError):
    """A missing, corrupt or incompatible checkpoint."""


class DivergedError(MetagradError):
    """Training produced a non-finite loss or weights; nothing non-finite was saved."""


class RunDirError(MetagradError):
    """A run directory that cannot be written, or that another run is using."""
