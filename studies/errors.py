"""The exceptions that mean bad input from the user (one line, exit code 2), not a bug."""
from studies.data.datasets import DataUnavailable
from studies.data.idx import IdxError

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, PermissionError, DataUnavailable, IdxError)
