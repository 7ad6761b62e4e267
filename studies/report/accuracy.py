"""The `accuracy` kind's section: paper Table 1 with seed statistics, its figure, and the paired
effects of every scientific factor and of CapsNet against the CNNs."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import seaborn as sns

from studies.data import datasets
from studies.report import effects as fx
from studies.report import stats
from studies.report.figures import markdown, save_figure, write_table_files
from studies.report.paper import table1_value
from studies.report.section import Comparisons, Section, SectionParts, study_section
from studies.report.trials import StudyTrials

PARAM_TITLES = {"routing_iters": "Routing", "recon_weight": "Reconstruction", "augmentation": "Augmentation"}
MODEL_ORDER = {"cnn_paper": 0, "cnn_pool": 1, "capsnet": 2}
TEST_ERROR = fx.Metric("test_error", "test error %", lower_is_better=True)
# A published number stands beside ours only when ours is in a meaningful range (test error in %).
MEANINGFUL_ERROR = 5.0
PERCENT = (0.0, 100.0)


def _display(column: str, value) -> Any:
    if pd.isna(value):
        return "-"
    if column == "recon_weight":
        return "no" if float(value) == 0 else f"yes ({float(value):g})"
    if column == "routing_iters":
        return int(value)
    return value


def _sort_key(value) -> tuple:
    return (0, value) if isinstance(value, (int, float)) and not pd.isna(value) else (1, str(value))


def ordered_parameters(scientific: list[str]) -> list[str]:
    return sorted(scientific, key=lambda c: (c not in PARAM_TITLES, list(PARAM_TITLES).index(c)
                                             if c in PARAM_TITLES else 0, c))


def summary(trials: StudyTrials) -> pd.DataFrame:
    """One row per configuration (model x scientific parameters): test error over seeds as mean,
    sample sd and 95% t interval, with the paper's value where it has one."""
    frame, params = trials.frame, ordered_parameters([c for c in trials.scientific if c in trials.frame])
    rows = []
    for key, group in frame.groupby(["model", *params], dropna=False, sort=False):
        values = dict(zip(["model", *params], key if isinstance(key, tuple) else (key,)))
        error = stats.summarize(100 * group["test_error"].astype(float), bounds=PERCENT)
        val_error = stats.summarize(100 * (1 - group["val_accuracy"].astype(float)), bounds=PERCENT) \
            if "val_accuracy" in group else stats.summarize([])
        recon = values.get("recon_weight")
        rows.append({
            "_order": (MODEL_ORDER.get(values["model"], 9), *(_sort_key(values[c]) for c in params)),
            **values, "n": error.n, "test_error_mean": error.mean, "test_error_sd": error.sd,
            "ci95_low": error.ci_low, "ci95_high": error.ci_high, "val_error_mean": val_error.mean,
            "val_error_sd": val_error.sd, "images_seen": int(group["images_seen"].max()),
            "params": int(group["params"].iloc[0]), "train_seconds_mean": group["train_seconds"].mean(),
            "paper_error": table1_value(values["model"], values.get("routing_iters"),
                                        0 if recon is None or pd.isna(recon) else recon,
                                        str(values.get("augmentation")), trials.spec.dataset),
        })
    return pd.DataFrame(rows).sort_values("_order").drop(columns="_order").reset_index(drop=True)


def _ci(low, high) -> str:
    return "-" if pd.isna(low) else f"[{low:.2f}, {high:.2f}]"


def display(table: pd.DataFrame, params: list[str]) -> pd.DataFrame:
    shown = {"Model": table["model"]}
    shown.update({PARAM_TITLES.get(c, c): table[c].map(lambda v, c=c: _display(c, v)) for c in params})
    shown.update({
        "Validation error % (mean ± sd)": [
            "-" if pd.isna(m) else f"{m:.2f}" + ("" if pd.isna(sd) else f" ± {sd:.2f}")
            for m, sd in zip(table["val_error_mean"], table["val_error_sd"])],
        "Test error % (mean)": table["test_error_mean"].map(lambda v: f"{v:.2f}"),
        "sd": table["test_error_sd"].map(lambda v: "-" if pd.isna(v) else f"{v:.2f}"),
        "95% CI (t)": [_ci(lo, hi) for lo, hi in zip(table["ci95_low"], table["ci95_high"])],
        "n": table["n"],
        "Parameters": table["params"].map(lambda v: f"{v:,}"),
        "Images seen": table["images_seen"].map(lambda v: f"{v:,}"),
        "Train s / seed": table["train_seconds_mean"].map(lambda v: f"{v:.0f}"),
        "Paper error %": [paper if not paper or mean <= MEANINGFUL_ERROR else "(not beside a model this far from trained)"
                          for paper, mean in zip(table["paper_error"], table["test_error_mean"])],
    })
    return pd.DataFrame(shown)


def _config_label(row: pd.Series) -> str:
    if row["model"] != "capsnet":
        return f"{row['model']} / {row.get('augmentation')}"
    recon = "recon" if float(row.get("recon_weight", 0) or 0) > 0 else "no recon"
    return f"capsnet r{int(row['routing_iters'])} {recon} / {row.get('augmentation')}"


def error_figure(frame: pd.DataFrame, path: Path, title: str) -> None:
    import matplotlib.pyplot as plt

    data = frame.assign(config=frame.apply(_config_label, axis=1), error=100 * frame["test_error"])
    order = sorted(data["config"].unique(), key=lambda c: (not c.startswith("cnn"), c))
    fig, ax = plt.subplots(figsize=(7.5, max(3.0, 0.35 * len(order) + 1.2)))
    for y, config in enumerate(order):
        s = stats.summarize(data.loc[data["config"] == config, "error"], bounds=PERCENT)
        ax.errorbar([s.mean], [y], xerr=[[s.mean - s.ci_low], [s.ci_high - s.mean]] if s.n > 1 else None,
                    fmt="o", color="#4c72b0", capsize=3)
    # No jitter: it is random, and a rebuilt report must equal the stored one.
    sns.stripplot(data=data, y="config", x="error", order=order, ax=ax, color="black", size=3, jitter=False)
    ax.set_xlabel("test error % (circles: mean over seeds, bars: 95% t interval, dots: seeds)")
    ax.set_ylabel("")
    ax.set_title(title, fontsize=10)
    save_figure(fig, path)


def accuracy_section(trials: StudyTrials, out: Path) -> Section:
    return study_section(trials, out, accuracy_parts)


def accuracy_parts(trials: StudyTrials, out: Path, stem: str) -> SectionParts:
    """Table 1 with seed statistics (CSV, Markdown, LaTeX), its figure, and the paired effects of
    every scientific factor and of CapsNet against the CNNs on the test error."""
    spec, options, frame = trials.spec, trials.options, trials.frame
    params = ordered_parameters([c for c in trials.scientific if c in frame])
    table = summary(trials)
    shown = display(table, params)
    files = write_table_files(table, frame, shown, out, stem, "table1",
                              f"{spec.title} on {spec.dataset} ({options.profile} profile); test error: mean, "
                              "sample sd and 95\\% t interval over seeds.")
    figure = out / f"{stem}-error.png"
    files.append(figure)
    error_figure(frame, figure, f"{spec.title}\n{spec.dataset}, profile {options.profile}")
    effects, missing = fx.mark_primary(fx.factor_effects(frame, spec, trials.scientific, TEST_ERROR)
                                       + fx.model_effects(frame, trials.scientific, TEST_ERROR), spec)
    body = [markdown(shown), "",
            "Test error in %: mean over seeds, sample standard deviation (n - 1) and 95% confidence interval "
            f"of the mean from Student's t, on {_test_set(trials)}; validation error on the validation split held "
            "out from the training images (a class-stratified random subset), beside it. Paper values are from the paper's own protocol (full MNIST, "
            "shifts of up to 2 px, ~300k steps) and are shown for orientation, not as a like-for-like "
            "comparison.", "", f"![test error per configuration]({figure.name})", ""]
    return SectionParts(Comparisons(effects, missing, "### Paired effects", "paired effects on test error"),
                        body, files, recipe=convention_lines(trials),
                        findings_subject=f"{spec.title} on {spec.dataset}")


def _test_set(trials: StudyTrials) -> str:
    sizes = sorted(int(v) for v in trials.frame["test_images"].unique())
    count = ", ".join(f"{v:,}" for v in sizes)
    whole = sum(datasets.get_info(trials.spec.dataset).test_histogram)
    return f"the whole test set ({count} images)" if sizes == [whole] else f"a class-stratified random {count} test images"


def convention_lines(trials: StudyTrials) -> list[str]:
    """Which margin-loss convention CapsNet trials used: it sets how much reconstruction weighs."""
    conventions = sorted({
        t.user_attrs.get("config", {}).get("model_options", {}).get("margin_convention", "paper")
        for t in trials.stored if t.user_attrs.get("point") in set(trials.frame["point"])
        and t.user_attrs.get("values", {}).get("model") == "capsnet"
    })
    if not conventions:
        return []
    meaning = {"paper": "summed over classes (the paper's formula)",
               "official": "averaged over classes and halved (the official code's; reconstruction weighs ~20x more)"}
    return [f"- CapsNet loss: margin loss {'; '.join(meaning[c] for c in conventions)}, plus recon_weight x the "
            "summed squared reconstruction error"]


