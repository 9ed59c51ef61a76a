"""Domain errors. Transport layers map these to their own codes; nothing here knows gRPC."""


class DetectorError(Exception):
    """Base class: a problem the user can fix, reported in one line without a traceback."""


class InvalidInput(DetectorError):
    """Samples or a data SPEC that cannot be scored as given."""


class DataError(InvalidInput):
    """A data SPEC or file that cannot be read."""


class BundleError(DetectorError):
    """A model bundle that is missing, tampered with, truncated or inconsistent."""


class ConfigError(DetectorError):
    """A settings file or flag value that makes no sense."""


class ModelNotReady(DetectorError):
    """The model is not loaded (yet), or is being swapped."""


class Overloaded(DetectorError):
    """The scoring queue is full: try again later (after ``retry_after_s`` seconds, when the server can tell)."""

    def __init__(self, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExpired(DetectorError):
    """The caller's deadline passed before the samples were scored."""


class Unauthenticated(DetectorError):
    """Missing or wrong credentials."""
