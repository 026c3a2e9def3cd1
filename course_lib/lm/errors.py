"""The one error that model loading raises, whatever the cause (offline, missing package, unsupported)."""


class ModelUnavailableError(RuntimeError):
    """The requested model can't be loaded here (offline, missing, unsupported)."""
