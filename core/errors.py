"""The project's own error hierarchy.

Backends translate vendor errors (sqlite3, botocore, xmlrpc, OSError from
transfers) into these at their boundary, so callers never import a vendor
module to handle a failure.
"""


class NommerError(Exception):
    """Base class of every error the project raises on purpose."""


class ConfigError(NommerError):
    """A setting is missing, unknown or of the wrong type. The message names the key."""


class ValidationError(NommerError):
    """Input from an API client is not acceptable.

    `code` is the wire error code (the original used BADINPUT for all of them).
    """

    def __init__(self, message: str, code: str = "BADINPUT"):
        super().__init__(message)
        self.code = code


class NotFound(NommerError):
    """The job, node or object asked for does not exist."""


class ConflictError(NommerError):
    """A conditional write lost: the record changed since it was read."""


class InvalidTransition(NommerError):
    """A state change that the job state machine does not allow."""


class BackendError(NommerError):
    """A store, queue or fleet backend failed (I/O, service down). Retryable."""


class StorageError(NommerError):
    """Reading the source or writing the destination failed. The message says why."""


class MediaError(NommerError):
    """The media could not be read, is not allowed, or ffmpeg failed on it.

    The message is the reason, fit for a job's state details.
    """
