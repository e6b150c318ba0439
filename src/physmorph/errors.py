"""The exceptions physmorph raises for problems a user can fix."""


class PhysmorphError(Exception):
    """Base class: the message names the input, the problem and the fix."""


class InputError(PhysmorphError):
    """A file or tensor given to physmorph is missing, unreadable or unusable."""


class ConfigError(PhysmorphError):
    """A configuration key is unknown, missing or out of range."""


class SimulationDiverged(PhysmorphError):
    """The simulation produced non-finite values or particles left the grid."""
