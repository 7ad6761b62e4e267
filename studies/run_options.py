"""The options of a run of studies (the command line's `studies run` and `studies report`), checked
field by field: which profile, where the trials are stored and the results written, on which device,
and how workers share the storage."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from annotated_types import Interval

from models.fields import check_fields
from studies.results_location import results_dir
from studies.spec.schema import PROFILES


@dataclass
class RunOptions:
    profile: Literal[PROFILES] = "quick"
    storage: str | None = None
    results_root: str | None = None
    device: str = "auto"
    data_root: str | None = None
    progress: bool = True
    # Seconds between a running trial's heartbeats (server storages) ...
    heartbeat_s: Annotated[float, Interval(gt=0, le=3600)] = 10.0
    # ... and without one before its worker counts as gone (file storages: a trial claimed but
    # never leased).
    grace_s: Annotated[float, Interval(gt=0, le=86400)] = 60.0
    workers: Annotated[int, Interval(ge=1, le=256)] = 1
    retry_failed: bool = False

    def __post_init__(self):
        check_fields(self)

    @property
    def results(self):
        return results_dir(self.profile, self.results_root)
