"""The errors a person can fix: the command line prints them as one line (exit status 2); any other
exception is a fault of leafseg and keeps its traceback.

    raise ConfigError("unknown config key 'lerning_rate' (did you mean lr?)")
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input: a wrong value, a missing file, a run folder that is in use. Printed without traceback."""


class ConfigError(UserError, ValueError):
    """A config file, key or value that cannot be used (also a ValueError, for callers that catch those)."""


class RunFolderError(UserError):
    """A run folder that holds another run (and neither resume nor overwrite was asked), or no run to resume."""
