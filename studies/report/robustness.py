"""The robustness sections: affNIST and the rotation/translation sweeps as curves along training,
CapsNet and the CNNs compared at equal clean (validation) accuracy.

Every trial trains its whole budget and records, at checkpoints, its validation accuracy and, at
the same weights, its robustness (studies/training/curves.py). At each level the spec states, each
seed's robustness-versus-validation curve is interpolated between the two checkpoints that
bracket the level, and the models are compared there, paired by seed: the CNN's curve is the
baseline, and CapsNet's vertical distance from it is its effective robustness (Taori et al. 2020;
Miller et al. 2021). The first checkpoint at or above each level (a single-crossing match) is shown
as a secondary view only.
"""
from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from studies.report import effects as fx
from studies.report import stats
from studies.report.accuracy import PARAM_TITLES, PERCENT
from studies.report.figures import markdown, save_figure, write_formatted, write_table_files
from studies.report.paper import AFFNIST_ACCURACY
from studies.report.section import Comparisons, Section, SectionParts, study_section
from studies.report.speeds import speed_lines
from studies.report.trials import StudyTrials
from studies.training.curves import first_crossing, interpolate

CLEAN = fx.Metric("test_accuracy", "clean test accuracy %", lower_is_better=False)
# The paper's affNIST numbers are for models at 99.2% clean accuracy: beside no lower level.
PAPER_LEVEL = 0.992
TITLES = {"model": "Model", **PARAM_TITLES}


def mean_ci(values, scale: float = 100.0, digits: int = 2) -> str:
    s = stats.summarize(np.asarray(values, dtype=float) * scale, bounds=PERCENT)
    if s.n == 0:
        return "-"
    if s.n == 1:
        return f"{s.mean:.{digits}f} (n = 1)"
    return f"{s.mean:.{digits}f} [{s.ci_low:.{digits}f}, {s.ci_high:.{digits}f}]"


def mean_sd(values, scale: float = 100.0, digits: int = 2) -> str:
    s = stats.summarize(np.asarray(values, dtype=float) * scale)
    if s.n == 0:
        return "-"
    return f"{s.mean:.{digits}f}" + ("" if s.n == 1 else f" ± {s.sd:.{digits}f}")


def _model_label(trials: StudyTrials, model: str) -> str:
    """The model and what its arm fixes beyond the input size (e.g. a CNN widened to a size)."""
    for arm in trials.spec.arms:
        if arm.model == model:
            shown = {k: v for k, v in arm.fixed.items() if k not in ("input_size",)}
            return model + (f" ({', '.join(f'{k}={v}' for k, v in shown.items())})" if shown else "")
    return model


# --- curves, sweeps and levels from the stored trials --------------------------------------------

def auc(amounts: np.ndarray, accuracy: np.ndarray) -> float:
    """Mean accuracy over the swept range (trapezoid rule)."""
    order = np.argsort(amounts)
    x, y = amounts[order].astype(float), accuracy[order].astype(float)
    span = x.max() - x.min()
    return float(np.trapezoid(y, x) / span) if span else float("nan")


def _stored_rows(trials: StudyTrials):
    """(trial row of the frame, its checkpoint rows) for every completed trial in the tables."""
    by_number = {t.number: t for t in trials.stored}
    for _, trial in trials.frame.iterrows():
        stored = by_number[int(trial["trial"])]
        yield trial, json.loads(stored.user_attrs.get("rows", "[]"))


def curve_frames(trials: StudyTrials) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per checkpoint of every trial (step, images, validation, clean test where measured,
    robustness), and for sweeps the long form (checkpoint, transform, amount, accuracy)."""
    keys = ["trial", "point", "model", "seed", *[c for c in trials.scientific if c in trials.frame]]
    curve, sweep = [], []
    for trial, rows in _stored_rows(trials):
        head = {k: trial[k] for k in keys}
        for row in rows:
            point = {**head, **{k: row.get(k) for k in ("step", "images", "epoch", "val_accuracy", "test_accuracy")}}
            if "affnist_accuracy" in row:
                point["affnist_accuracy"] = row["affnist_accuracy"]
            if "sweep" in row:
                measured = pd.DataFrame(row["sweep"])
                for transform, group in measured.groupby("transform"):
                    point[f"{transform}_auc"] = auc(group["amount"].to_numpy(), group["accuracy"].to_numpy())
                sweep += [{**head, "step": row["step"], **entry} for entry in row["sweep"]]
            curve.append(point)
    return pd.DataFrame(curve), pd.DataFrame(sweep)


def level_frame(trials: StudyTrials, curves: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Per trial and level: the metrics interpolated at the level between the bracketing checkpoints
    (NaN where the level was not bracketed), the images seen there, and the secondary view: the first
    checkpoint at or above the level, as read."""
    levels = trials.profile.settings.levels
    budget = [c for c in ("images_seen", "batch_size", "params", "train_images") if c in trials.frame]
    extra = trials.frame.set_index("trial")[budget]
    out = []
    for trial, checkpoints in curves.groupby("trial", sort=False):
        checkpoints = checkpoints.sort_values("step")
        readings = checkpoints["val_accuracy"].tolist()
        head = checkpoints.iloc[0][[c for c in curves.columns if c in ("trial", "point", "model", "seed")
                                    or c in trials.scientific]].to_dict()
        for level in levels:
            row = {**head, **extra.loc[trial].to_dict(), "level": level,
                   "reached": first_crossing(readings, level) is not None,
                   "images_at_level": interpolate(readings, checkpoints["images"].tolist(), level)}
            for column in [*metrics, "test_accuracy"]:
                values = [None if pd.isna(v) else float(v) for v in checkpoints[column]]
                row[column] = interpolate(readings, values, level)
            above = next((i for i, reading in enumerate(readings) if reading >= level), None)
            row["first_at_or_above_val"] = readings[above] if above is not None else np.nan
            for column in metrics:
                row[f"first_at_or_above_{column}"] = checkpoints[column].iloc[above] if above is not None else np.nan
            out.append(row)
    return pd.DataFrame(out)


def level_effects(trials: StudyTrials, levels: pd.DataFrame, metrics: list[fx.Metric]) -> tuple[pd.DataFrame, list]:
    """At each level, on every robustness metric and the clean test accuracy: CapsNet minus every
    other model, and within each model each varied scientific parameter against its first value
    (e.g. a routing procedure against dynamic routing)."""
    rows = []
    for level, at in levels.groupby("level", sort=True):
        reached = at[at["reached"]]
        for metric in [*metrics, CLEAN]:
            for row in [*fx.model_effects(reached, trials.scientific, metric),
                        *fx.factor_effects(reached, trials.spec, trials.scientific, metric)]:
                rows.append({**row, "at_level": level})
    return fx.mark_primary(rows, trials.spec, trials.profile.settings.levels)


def level_table(trials: StudyTrials, levels: pd.DataFrame, metrics: list[fx.Metric], paper: bool) -> pd.DataFrame:
    rows = []
    keys = _keys(trials, levels)
    for (level, *values), group in levels.groupby(["level", *keys], sort=False, dropna=False):
        reached = group[group["reached"]]
        row = {"Validation acc. (level) %": f"{100 * level:g}", "Model": _model_label(trials, values[0]),
               **{k: _shown(v) for k, v in zip(keys[1:], values[1:])},
               "Seeds at the level": f"{len(reached)}/{len(group)}",
               "Images at the level": mean_sd(reached["images_at_level"], 1.0, 0),
               "Clean test acc. % [95% CI]": mean_ci(reached["test_accuracy"])}
        for metric in metrics:
            row[f"{metric.label.removesuffix(' %')} % [95% CI]"] = mean_ci(reached[metric.column])
        if paper:
            row["Paper affNIST acc. %"] = (AFFNIST_ACCURACY["capsnet" if values[0] == "capsnet" else "cnn"]
                                           if level >= PAPER_LEVEL else "-")
        rows.append(row)
    return pd.DataFrame(rows)


def _shown(value):
    """A parameter's value in a table; "-" for a model that does not have the parameter."""
    return "-" if pd.isna(value) else value


def _keys(trials: StudyTrials, frame: pd.DataFrame) -> list[str]:
    """The columns a model's configuration is told by: the model and its scientific parameters."""
    return ["model", *[c for c in trials.scientific if c in frame and c != "model"]]


def secondary_table(trials: StudyTrials, levels: pd.DataFrame, metrics: list[fx.Metric]) -> pd.DataFrame:
    """The single-crossing view: the first checkpoint whose validation reading is at or above each
    level, as read (its reading overshoots the level by an amount that depends on the model)."""
    rows = []
    keys = _keys(trials, levels)
    for (level, *values), group in levels.groupby(["level", *keys], sort=False, dropna=False):
        row = {"Level %": f"{100 * level:g}", **{k: _shown(v) for k, v in zip(keys, values)},
               "Validation reading at the first checkpoint at or above %": mean_sd(group["first_at_or_above_val"])}
        for metric in metrics:
            row[f"{metric.label} there"] = mean_sd(group[f"first_at_or_above_{metric.column}"])
        rows.append(row)
    return pd.DataFrame(rows).rename(columns=TITLES)


def end_table(trials: StudyTrials, curves: pd.DataFrame, metrics: list[fx.Metric]) -> pd.DataFrame:
    """The end of the budget: every trial's last checkpoint."""
    last = curves.sort_values("step").groupby("trial").tail(1)
    frame = trials.frame.set_index("trial")
    rows = []
    keys = _keys(trials, last)
    for values, group in last.groupby(keys, sort=False, dropna=False):
        values = values if isinstance(values, tuple) else (values,)
        trial_rows = frame.loc[group["trial"]]
        row = {"Model": _model_label(trials, values[0]), **{k: _shown(v) for k, v in zip(keys[1:], values[1:])},
               "Parameters": f"{int(trial_rows['params'].iloc[0]):,}",
               "Images seen": ", ".join(f"{int(v):,}" for v in sorted(trial_rows["images_seen"].unique())),
               "Validation acc. %": mean_sd(group["val_accuracy"]),
               "Clean test acc. % [95% CI]": mean_ci(group["test_accuracy"])}
        for metric in metrics:
            row[f"{metric.label} [95% CI]"] = mean_ci(group[metric.column])
        rows.append(row)
    return pd.DataFrame(rows).rename(columns=TITLES)


def curves_figure(curves: pd.DataFrame, metrics: list[fx.Metric], levels: tuple[float, ...], path: Path,
                  title: str, keys: list[str]) -> None:
    """Robustness against validation accuracy along training, one line per trial (model, its
    configuration and seed), the levels as dotted lines: where CapsNet's curve runs above the CNN's
    at the same clean accuracy, it is more robust than its clean accuracy predicts."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.2 * len(metrics), 4.6), squeeze=False)
    others = [k for k in keys if k != "model" and curves[k].nunique(dropna=False) > 1]

    def configuration(row) -> str:  # a parameter another model lacks reads "-"
        return ", ".join("-" if pd.isna(row[k]) else str(row[k]) for k in others)

    # A colour per model and configuration (a routing procedure, say), a line style per model.
    models = list(dict.fromkeys(curves["model"]))
    styles = {model: ["-", "--", ":", "-."][i % 4] for i, model in enumerate(models)}
    groups = list(dict.fromkeys((row["model"], configuration(row)) for _, row in curves.iterrows()))
    palette = dict(zip(groups, sns.color_palette("deep" if len(groups) <= 10 else "husl", len(groups))))
    for ax, metric in zip(axes[0], metrics):
        for _, trial in curves.groupby("trial", sort=False):
            trial = trial.sort_values("step")
            first = trial.iloc[0]
            described = configuration(first)
            label = f"{first['model']}" + (f" ({described})" if described else "") + f", seed {first['seed']}"
            ax.plot(100 * trial["val_accuracy"], 100 * trial[metric.column], marker="o", markersize=2.5, linewidth=1,
                    linestyle=styles[first["model"]], color=palette[(first["model"], described)], alpha=0.85,
                    label=label)
        for level in levels:
            ax.axvline(100 * level, color="gray", linestyle=":", linewidth=0.8)
        ax.set_xlabel("validation accuracy % (clean; checkpoints along training)")
        ax.set_ylabel(metric.label)
        ax.legend(fontsize=6, ncol=2)
    fig.suptitle(textwrap.fill(title, int(12 * fig.get_figwidth())), fontsize=10)  # about 12 characters an inch
    save_figure(fig, path)


# --- the sections ----------------------------------------------------------------------------

def _curve_lines(trials: StudyTrials) -> list[str]:
    settings = trials.profile.settings
    levels = ", ".join(f"{100 * level:g}%" for level in settings.levels)
    val = trials.frame["val_images"].iloc[0] if "val_images" in trials.frame else "?"
    denser = (f", every {settings.dense_every} while validation is within {100 * settings.dense_margin:g} points "
              "of a level (decided from validation readings only)"
              if settings.dense_margin > 0 and settings.dense_every < settings.check_every else "")
    return [f"- protocol: every model trains the whole budget; checkpoints every {settings.check_every} steps{denser}; "
            f"compared at validation accuracy {levels} "
            f"(validation split: {val} images held out from the training images, class-stratified at random)"]


def _write_curves(trials: StudyTrials, out: Path, stem: str, curves: pd.DataFrame, levels: pd.DataFrame,
                  metrics: list[fx.Metric]) -> list[Path]:
    files = [out / f"{stem}-curves.csv", out / f"{stem}-levels.csv", out / f"{stem}-curves.png"]
    columns = [c for c in curves.columns if c not in ("trial", "point")]
    curves[columns].to_csv(files[0], index=False)
    levels.drop(columns=["trial", "point"]).to_csv(files[1], index=False)
    curves_figure(curves, metrics, trials.profile.settings.levels, files[2],
                  f"{trials.spec.title}: robustness against clean accuracy along training "
                  f"({trials.options.profile} profile)", _keys(trials, curves))
    return files


@dataclass
class AlongCurves:
    """What both robustness sections build from their curves: the comparisons at each level, the
    tables at the levels, at the end of the budget and at the first checkpoint at or above each
    level, and the files written for them."""
    comparisons: Comparisons
    table: pd.DataFrame
    end: pd.DataFrame
    secondary: pd.DataFrame
    files: list[Path]

    def lines(self, stem: str, note: str, speeds: list[str], secondary_note: list[str]) -> list[str]:
        """The levels table with the kind's note and the curves figure, the end of the budget, the
        kind's speed lines, and the secondary view with the kind's note on it."""
        return ["#### At equal clean accuracy", "", markdown(self.table), "", note, "",
                f"![robustness against clean accuracy]({stem}-curves.png)", "",
                "#### At the end of the budget", "", markdown(self.end), "",
                *speeds,
                "#### Secondary view: the first checkpoint at or above each level", "",
                markdown(self.secondary), "", *secondary_note]


def _compared_along_curves(trials: StudyTrials, out: Path, stem: str, curves: pd.DataFrame,
                           metrics: list[fx.Metric], paper: bool) -> AlongCurves:
    """The tables at the levels and at the end of the budget, the curves and the comparisons at each
    level, with the files of all but the comparisons (the section skeleton writes those)."""
    spec, options, frame = trials.spec, trials.options, trials.frame
    levels = level_frame(trials, curves, [m.column for m in metrics])
    effects, missing = level_effects(trials, levels, metrics)
    table = level_table(trials, levels, metrics, paper=paper)
    end = end_table(trials, curves, metrics)
    files = write_table_files(table, frame, table, out, stem, "levels-table",
                              f"{spec.title} ({options.profile} profile): at each validation-accuracy level, "
                              "mean and 95\\% t interval over the seeds whose curve reached it.")
    files += _write_curves(trials, out, stem, curves, levels, metrics)
    files += write_formatted(end, out, f"{stem}-end", f"{spec.title}: the end of the budget ({options.profile} profile)")
    comparisons = Comparisons(effects, missing, "### Paired differences at equal clean accuracy",
                              "paired differences at equal clean accuracy",
                              unresolved_heading="Exploratory comparisons not resolved:")
    return AlongCurves(comparisons, table, end, secondary_table(trials, levels, metrics), files)


def affnist_section(trials: StudyTrials, out: Path) -> Section:
    return study_section(trials, out, affnist_parts)


def affnist_parts(trials: StudyTrials, out: Path, stem: str) -> SectionParts:
    """The robustness set, and CapsNet against the CNNs on it at equal clean accuracy."""
    frame = trials.frame
    set_names = sorted(frame["robustness_set"].unique())
    set_label = " / ".join(set_names)
    metrics = [fx.Metric("affnist_accuracy", f"{set_label} accuracy %", lower_is_better=False)]
    curves, _ = curve_frames(trials)
    compared = _compared_along_curves(trials, out, stem, curves, metrics, paper=True)
    first = next(t for t in trials.stored if t.number == int(frame["trial"].iloc[0]))
    details = json.dumps(first.user_attrs["metrics"]["robustness_details"])
    body = compared.lines(
        stem,
        "Each model trains the whole budget on expanded MNIST (digits placed at random on a 40x40 canvas); at "
        "checkpoints its accuracy on the validation split and, at the same weights, on the robustness set are "
        "recorded. At each level, every seed's robustness is interpolated between the two checkpoints whose "
        "validation readings bracket the level (the first crossing), and so is its clean test accuracy "
        "(measured at those checkpoints). The paper early-stopped on its test set; here nothing is chosen by "
        "reading the test set or the robustness set. The paper's 79% / 66% are for the official affNIST at "
        "99.2% clean accuracy and stand beside no lower level.",
        speeds=[],
        secondary_note=[
            "A single-crossing match takes the first checkpoint whose noisy validation reading reaches the level: "
            "it selects on that noise, by an amount that depends on how fast each model learns, so it is shown "
            "for comparison only.", ""])
    if any("style" in name for name in set_names):
        body += ["The robustness set here is generated, not the official affNIST: its numbers are not "
                 "comparable with the paper's affNIST results.", ""]
    robustness_set = f"- robustness test set: **{', '.join(set_names)}** ({details})"
    return SectionParts(compared.comparisons, body, compared.files, protocol=[*_curve_lines(trials), robustness_set],
                        findings_data=set_label)


def sweep_at_level(trials: StudyTrials, curves: pd.DataFrame, sweep: pd.DataFrame) -> tuple[pd.DataFrame, float | None]:
    """The sweep interpolated at the highest level every trial reached (long form), and that level
    (None: no level reached by all; the sweep is then the end of the budget's)."""
    readings = {trial: group.sort_values("step")["val_accuracy"].tolist() for trial, group in curves.groupby("trial")}
    common = [level for level in trials.profile.settings.levels
              if all(first_crossing(r, level) is not None for r in readings.values())]
    level = common[-1] if common else None
    rows = []
    for (trial, transform, amount), group in sweep.groupby(["trial", "transform", "amount"], sort=False):
        group = group.sort_values("step")
        if level is None:
            accuracy = group["accuracy"].iloc[-1]
        else:
            steps = curves[curves["trial"] == trial].sort_values("step")
            by_step = dict(zip(group["step"], group["accuracy"]))
            accuracy = interpolate(readings[trial], [by_step.get(s) for s in steps["step"]], level)
        rows.append({**group.iloc[0][[c for c in group.columns if c not in ("step", "accuracy")]].to_dict(),
                     "accuracy": accuracy})
    return pd.DataFrame(rows), level


def sweep_figure(sweep: pd.DataFrame, transform: str, path: Path, xlabel: str, title: str) -> None:
    data = sweep[sweep["transform"] == transform].assign(accuracy_pct=lambda d: 100 * d["accuracy"])
    fig, ax = plt.subplots(figsize=(8, 4.5))
    style = "augmentation" if "augmentation" in data and data["augmentation"].nunique() > 1 else None
    sns.lineplot(data=data, x="amount", y="accuracy_pct", hue="model", style=style, errorbar="sd", markers=True, ax=ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy % (band: ± sd over seeds)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def rotation_section(trials: StudyTrials, out: Path) -> Section:
    return study_section(trials, out, rotation_parts)


def rotation_parts(trials: StudyTrials, out: Path, stem: str) -> SectionParts:
    """The rotation and translation sweeps' AUCs at equal clean accuracy, the training speeds, and
    each sweep at the highest level every trial reached."""
    spec, options = trials.spec, trials.options
    metrics = [fx.Metric("rotation_auc", "rotation AUC %", False), fx.Metric("translation_auc", "translation AUC %", False)]
    curves, sweep = curve_frames(trials)
    compared = _compared_along_curves(trials, out, stem, curves, metrics, paper=False)
    files = compared.files
    at_level, level = sweep_at_level(trials, curves, sweep)
    sweep_file = out / f"{stem}-sweep.csv"
    sweep.drop(columns=["trial", "point"]).to_csv(sweep_file, index=False)
    files.append(sweep_file)
    where_swept = (f"interpolated at {100 * level:g}% validation accuracy, the highest level every trial reached"
                   if level is not None else "at the end of the budget (no level was reached by every trial)")
    lines = compared.lines(
        stem,
        "AUC: a checkpoint's mean accuracy over the whole sweep (trapezoid rule), on the test subset; the clean "
        "test accuracy is the sweep's unchanged point. At each level every seed's values are interpolated "
        "between the two checkpoints whose validation readings bracket it (the first crossing). Nothing is "
        "chosen by reading the test set.",
        speeds=speed_lines(trials), secondary_note=[])
    for transform, unit, xlabel in [
        ("rotation", "degrees", "rotation of the test digits (degrees, counter-clockwise)"),
        ("translation", "px", "horizontal shift of the test digits (pixels, zero fill)"),
    ]:
        chosen = at_level[at_level["transform"] == transform]
        amounts = ", ".join(f"{a:g}" for a in sorted(chosen["amount"].unique()))
        png = out / f"{stem}-{transform}.png"
        sweep_figure(at_level, transform, png, xlabel, f"{spec.dataset}: accuracy vs {transform}, {where_swept}, "
                                                      f"profile {options.profile}")
        files.append(png)
        lines += [f"#### {transform.capitalize()} sweep", "", f"Amounts ({unit}): {amounts}; {where_swept}.", "",
                  f"![{transform} sweep]({png.name})", ""]
    return SectionParts(compared.comparisons, lines, files, protocol=_curve_lines(trials))
