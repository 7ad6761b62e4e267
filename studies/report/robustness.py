"""The robustness sections: affNIST and the rotation/translation sweeps, each comparing CapsNet
with the CNNs at matched clean accuracy (chosen on a validation split), with seed statistics and
paired effects."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from studies.report import effects as fx
from studies.report import stats
from studies.report.accuracy import standard_hint
from studies.report.figures import markdown, save_figure, write_formatted, write_table_files
from studies.report.findings import affnist_findings, rotation_findings
from studies.report.paper import AFFNIST_ACCURACY
from studies.report.section import Section, empty_section, left_out_lines
from studies.report.trials import StudyTrials, budget_lines, failure_lines, file_stem, files_line

CLEAN = fx.Metric("clean_accuracy", "clean test accuracy %", lower_is_better=False)


def mean_ci(values, scale: float = 100.0, digits: int = 2) -> str:
    s = stats.summarize(np.asarray(values, dtype=float) * scale)
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


def matching_lines(trials: StudyTrials, matched: pd.DataFrame) -> list[str]:
    """How close the matched validation accuracies came, per model and between them."""
    if matched.empty:
        return []
    means = matched.groupby("model")["matched_val_accuracy"].mean() * 100
    spread = means.max() - means.min()
    per_model = ", ".join(f"{m} {v:.2f}%" for m, v in means.items())
    return [f"- matched on the validation split (held out from the training images; the test set is read only "
            f"after the match): mean validation accuracy at the match {per_model}; the models' means differ by "
            f"{spread:.2f} points"]


# --- affNIST ---------------------------------------------------------------------------------

def affnist_table(trials: StudyTrials) -> tuple[pd.DataFrame, list[str]]:
    frame = trials.frame
    set_names = sorted(frame["robustness_set"].unique())
    set_label = " / ".join(set_names)
    rows = []
    for model, group in frame.groupby("model", sort=False):
        reached = group[group["reached_target"].astype(bool)]
        unmatched = group[~group["reached_target"].astype(bool)]
        rows.append({
            "Model": _model_label(trials, model),
            "Parameters": f"{int(group['params'].iloc[0]):,}",
            "Target (validation) %": f"{100 * group['target_accuracy'].iloc[0]:.1f}",
            "Reached target": f"{len(reached)}/{len(group)} seeds",
            "Validation acc. at match %": mean_sd(reached["matched_val_accuracy"]),
            "Images to target": mean_sd(reached["matched_images"], 1.0, 0),
            "Clean test acc. % (expanded MNIST) [95% CI]": mean_ci(reached["clean_accuracy"]),
            f"{set_label} acc. % [95% CI]": mean_ci(reached["affnist_accuracy"]),
            "Seeds short of the target: acc. %": mean_sd(unmatched["unmatched_affnist_accuracy"]) if len(unmatched)
            else "-",
            "Paper affNIST acc. %": AFFNIST_ACCURACY["capsnet" if model == "capsnet" else "cnn"],
        })
    return pd.DataFrame(rows), set_names


def affnist_section(trials: StudyTrials, out: Path) -> Section:
    spec, options, frame = trials.spec, trials.options, trials.frame
    if frame.empty:
        return empty_section(spec)
    stem = file_stem(spec)
    table, set_names = affnist_table(trials)
    matched = frame[frame["reached_target"].astype(bool)]
    robust = fx.Metric("affnist_accuracy", f"{' / '.join(set_names)} accuracy %", lower_is_better=False)
    effects = fx.effects_frame(fx.model_effects(matched, trials.scientific, robust)
                               + fx.model_effects(matched, trials.scientific, CLEAN))
    files = write_table_files(table, frame, table, out, stem, "table",
                              f"{spec.title} ({options.profile} profile); mean and 95\\% t interval over "
                              "the seeds that reached the target.")
    files += fx.write_effects(effects, out, stem, f"{spec.title}: CapsNet minus CNN at matched clean accuracy "
                                                  f"({options.profile} profile)")
    first = next(t for t in trials.study.get_trials(deepcopy=False) if t.number == int(frame["trial"].iloc[0]))
    details = json.dumps(first.user_attrs["metrics"]["robustness_details"])
    lines = [*budget_lines(trials), *left_out_lines(trials), *matching_lines(trials, matched),
             f"- robustness test set: **{', '.join(set_names)}** ({details})", "",
             markdown(table), "",
             "Each model is trained on expanded MNIST until its accuracy on a validation split held out from the "
             f"training images reaches the target: validation is read every {int(frame['check_every'].iloc[0])} "
             "training steps once the training accuracy is near the target, and when a check reaches it the steps "
             "since the previous check are validated in turn, so the model kept is the first step at the target"
             + (" or the step before it, whichever reads nearer the target. " if trials.profile.settings.match == "nearest"
                else ". ") +
             "That model is then tested on "
             "the clean expanded-MNIST test set and on the robustness set. The paper early-stopped on its test "
             "set; we do not, because a checkpoint chosen on the test set makes the reported test accuracy a "
             "selected, optimistic number. A seed that never reached the target is not in the matched columns "
             "(its final model is shown apart). The paper's 79% / 66% are for the official affNIST at 99.2% "
             "clean accuracy.", ""]
    if any("style" in name for name in set_names):
        lines += ["The robustness set here is generated, not the official affNIST: its numbers are not "
                  "comparable with the paper's affNIST results.", ""]
    lines += ["### CapsNet minus CNN at matched clean accuracy", "",
              markdown(fx.display_table(effects)), "", fx.EXPLANATION, ""]
    unresolved = fx.unresolved_sentences(effects, standard_hint(trials))
    if unresolved:
        lines += ["Not resolved at this budget:", "", *unresolved, ""]
    lines += failure_lines(trials)
    lines.append(files_line(files))
    return Section(f"{spec.title} — {spec.dataset}", "\n".join(lines) + "\n", files,
                   findings=affnist_findings(trials, matched, effects, set_names))


# --- rotation and translation ------------------------------------------------------------------

def sweep_frame(trials: StudyTrials) -> pd.DataFrame:
    """Long form: model, train augmentation, seed, transform, amount, accuracy."""
    rows = []
    kept = set(trials.frame["trial"])
    for trial in trials.study.get_trials(deepcopy=False):
        if trial.number not in kept:
            continue
        values = trial.user_attrs["values"]
        for row in json.loads(trial.user_attrs.get("rows", "[]")):
            rows.append({"model": values["model"], "train_augmentation": values.get("augmentation"),
                         "seed": values["seed"], **row})
    return pd.DataFrame(rows)


def auc(amounts: np.ndarray, accuracy: np.ndarray) -> float:
    """Mean accuracy over the swept range (trapezoid rule)."""
    order = np.argsort(amounts)
    x, y = amounts[order].astype(float), accuracy[order].astype(float)
    span = x.max() - x.min()
    return float(np.trapezoid(y, x) / span) if span else float("nan")


def with_aucs(frame: pd.DataFrame, sweep: pd.DataFrame) -> pd.DataFrame:
    """The trials frame plus each trial's rotation and translation AUC."""
    values = {}
    for (model, aug, seed, transform), group in sweep.groupby(["model", "train_augmentation", "seed", "transform"]):
        values.setdefault((model, aug, seed), {})[f"{transform}_auc"] = auc(group["amount"].to_numpy(),
                                                                          group["accuracy"].to_numpy())
    extra = pd.DataFrame([{"model": m, "augmentation": a, "seed": s, **v} for (m, a, s), v in values.items()])
    return frame.merge(extra, on=["model", "augmentation", "seed"], how="left")


def sweep_summary(frame: pd.DataFrame, sweep: pd.DataFrame, transform: str, marks: list[int]) -> pd.DataFrame:
    data = sweep[sweep["transform"] == transform]
    rows = []
    for (model, aug), group in data.groupby(["model", "train_augmentation"], sort=False):
        trials = frame[(frame["model"] == model) & (frame["augmentation"] == aug)]
        row = {"Model": model, "Train augmentation": aug, "n": trials["seed"].nunique()}
        if "matched_val_accuracy" in trials:
            row["Val. acc. at match %"] = mean_sd(trials["matched_val_accuracy"])
        row["Clean test acc. %"] = mean_sd(trials["clean_accuracy"])
        per_seed = group.groupby(["seed", "amount"])["accuracy"].mean().unstack()
        for mark in marks:
            if not mark:
                continue
            chosen = [c for c in per_seed.columns if c in (mark, -mark)]
            row[f"acc. % at ±{mark}"] = mean_sd(per_seed[chosen].mean(axis=1)) if chosen else "-"
        row["AUC (mean acc. %) [95% CI]"] = mean_ci(trials[f"{transform}_auc"])
        rows.append(row)
    return pd.DataFrame(rows)


def sweep_figure(sweep: pd.DataFrame, transform: str, path: Path, xlabel: str, title: str) -> None:
    data = sweep[sweep["transform"] == transform].assign(accuracy_pct=lambda d: 100 * d["accuracy"])
    fig, ax = plt.subplots(figsize=(8, 4.5))
    sns.lineplot(data=data, x="amount", y="accuracy_pct", hue="model", style="train_augmentation",
                 errorbar="sd", markers=True, ax=ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy % (band: ± sd over seeds)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def rotation_section(trials: StudyTrials, out: Path) -> Section:
    spec, options = trials.spec, trials.options
    if trials.frame.empty:
        return empty_section(spec)
    stem = file_stem(spec)
    sweep = sweep_frame(trials)
    frame = with_aucs(trials.frame, sweep)
    matched = frame[frame["reached_target"].astype(bool)] if "reached_target" in frame else frame
    metrics = [fx.Metric("rotation_auc", "rotation AUC %", False), fx.Metric("translation_auc", "translation AUC %", False),
               CLEAN]
    effects = fx.effects_frame([row for metric in metrics for row in fx.model_effects(matched, trials.scientific, metric)])
    files = [out / f"{stem}-trials.csv", out / f"{stem}-sweep.csv"]
    frame.to_csv(files[0], index=False)
    sweep.to_csv(files[1], index=False)
    summaries = {}
    lines = [*budget_lines(trials), *left_out_lines(trials)]
    if "reached_target" in frame:
        lines += matching_lines(trials, matched)
        short = frame[~frame["reached_target"].astype(bool)]
        if len(short):
            lines.append(f"- {len(short)} trial(s) never reached the validation target within the budget: "
                         + ", ".join(short["point"]) + " (left out of the comparison below)")
    lines.append("")
    for transform, marks, unit, xlabel in [
        ("rotation", [0, 30, 60, 90], "degrees", "rotation of the test digits (degrees, counter-clockwise)"),
        ("translation", [0, 2, 4, 6], "px", "horizontal shift of the test digits (pixels, zero fill)"),
    ]:
        summary = sweep_summary(frame, sweep, transform, marks)
        summaries[transform] = summary
        files += write_formatted(summary, out, f"{stem}-{transform}",
                                 f"Accuracy under test-time {transform} ({options.profile} profile); mean ± sd "
                                 "over seeds, AUC with its 95\\% t interval.")
        png = out / f"{stem}-{transform}.png"
        sweep_figure(sweep, transform, png, xlabel, f"{spec.dataset}: accuracy vs {transform}, profile {options.profile}")
        files.append(png)
        amounts = ", ".join(f"{a:g}" for a in sorted(sweep[sweep["transform"] == transform]["amount"].unique()))
        lines += [f"### {transform.capitalize()}", "", f"Amounts ({unit}): {amounts}.", "",
                  markdown(summary), "",
                  "Accuracy averaged over +a and -a, mean ± sd over seeds; the clean test accuracy is the sweep's 0 "
                  "point; AUC is each seed's mean accuracy over the whole sweep (trapezoid rule), with the 95% t "
                  "interval over seeds.", "", f"![{transform} sweep]({png.name})", ""]
    files += fx.write_effects(effects, out, stem, f"{spec.title}: CapsNet minus CNN at matched clean accuracy "
                                                  f"({options.profile} profile)")
    lines += ["### CapsNet minus CNN at matched clean accuracy", "",
              markdown(fx.display_table(effects)), "", fx.EXPLANATION, ""]
    unresolved = fx.unresolved_sentences(effects, standard_hint(trials))
    if unresolved:
        lines += ["Not resolved at this budget:", "", *unresolved, ""]
    lines += failure_lines(trials)
    lines.append(files_line(files))
    return Section(f"{spec.title} — {spec.dataset}", "\n".join(lines) + "\n", files,
                   findings=rotation_findings(trials, matched, effects))
