"""The exceptions that mean bad input from the user (one line, exit code 2), not a bug."""
from studies.datasets import DataUnavailable
from studies.idx import IdxError

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, PermissionError, DataUnavailable, IdxError)
