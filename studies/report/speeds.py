"""The training speed of a study's configurations, read from the throughput tables beside it.

A trial's own images/s mixes in what it evaluates along the way (checkpoints, sweeps) and, on a
shared machine, whatever else ran; the `throughput` study times the bare training step of every
model (and of CapsNet with each routing procedure, `capsnet/<procedure>`), each table labelled
with the machine that measured it (bench/README.md)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from studies.report.figures import markdown
from studies.report.trials import StudyTrials


def _bench_name(model: str, routing) -> str:
    return model if not isinstance(routing, str) or routing == "dynamic" else f"{model}/{routing}"


def speed_lines(trials: StudyTrials) -> list[str]:
    """A table of training images/s at the study's batch size, per configuration and throughput
    table stored in the study's results directory; nothing where no table has them."""
    out = Path(trials.options.results)
    frame = trials.frame
    batch = int(frame["batch_size"].iloc[0]) if "batch_size" in frame and len(frame) else None
    configurations = frame[["model", *(["routing"] if "routing" in frame else [])]].drop_duplicates()
    names = [_bench_name(row.model, getattr(row, "routing", None)) for row in configurations.itertuples()]
    rows = []
    for path in sorted(out.glob("throughput-*.csv")):
        table = pd.read_csv(path)
        if not {"section", "mode", "model", "batch", "images_per_s"} <= set(table.columns):
            continue
        train = table[(table["section"] == "models") & (table["mode"] == "train") & (table["batch"] == batch)]
        found = {name: train[train["model"] == name]["images_per_s"] for name in names}
        if not any(len(values) for values in found.values()):
            continue
        first = train.iloc[0]
        machine = f"{first['device']}, {first['device_name']}, {first['dtype']}"
        rows.append({"Machine (throughput table)": f"{machine} ([{path.name}]({path.name}))",
                     **{name: f"{values.iloc[0]:.0f}" if len(values) else "-" for name, values in found.items()}})
    if not rows:
        return []
    return [f"#### Training speed (images/s, batch {batch})", "",
            "The bare training step (forward, loss, backward, Adam) of each configuration as the `throughput` study "
            "timed it, with the speed paths chosen for it on that machine; the paper's dynamic routing runs "
            "hand-written CPU kernels where they pay, the other procedures plain PyTorch ops.", "",
            markdown(pd.DataFrame(rows)), ""]
