"""The exceptions that mean bad input from the user, or a disk that cannot take what a run writes
(one line, exit code 2). Anything else is a bug and keeps its traceback."""
from models.fields import ConfigError
from studies.data.affnist import AffnistError
from studies.data.datasets import DataInvalid, DataUnavailable
from studies.data.idx import IdxError
from studies.store.storage import StorageError
from studies.spec.study import SpecError
from studies.write_faults import WriteFailed

USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, SpecError, StorageError, PermissionError, DataUnavailable, DataInvalid, IdxError, AffnistError,
    WriteFailed,
)
