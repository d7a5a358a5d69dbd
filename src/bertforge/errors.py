"""User-facing errors.

Anything a user can cause (a bad file, a wrong flag, a checkpoint that does not fit) raises a
subclass of `BertforgeError` with a message that names the file, line or field and says what
was expected. The CLI prints the message and exits non-zero without a traceback; library users
catch the class.
"""


class BertforgeError(Exception):
    """Base class of every error caused by user input."""


class ConfigError(BertforgeError):
    """A configuration file, preset or flag is wrong."""


class CheckpointError(BertforgeError):
    """A checkpoint is missing, unreadable, or does not fit the model."""


class DataError(BertforgeError):
    """An input data file is missing or malformed."""


class DeviceError(BertforgeError):
    """A requested device or distributed setup is not available."""


class WriteError(BertforgeError):
    """An output could not be written (disk full, quota, permissions, a read-only file system).
    The message names the path and, where known, the space the write needed and what was free."""
