"""Tables, figures and REPORT.md, rebuilt from the stored trials without training."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on these machines
import matplotlib.pyplot as plt
import optuna
import pandas as pd
import seaborn as sns
from optuna.trial import TrialState

from studies.engine.runner import FAILURE_ATTR, POINT_ATTR, RunOptions, open_study
from studies.report.paper import table1_value
from studies.spec.study import StudySpec

TRIAL_COLUMNS = ("model", "seed")
HIDDEN_METRICS = ("history",)


@dataclass
class Section:
    """One study's part of REPORT.md and the files it wrote."""

    title: str
    markdown: str
    files: list[Path]


def file_stem(spec: StudySpec) -> str:
    """Result files are named after the study and, when it is not MNIST, the dataset."""
    return spec.name if spec.dataset == "mnist" else f"{spec.name}-{spec.dataset}"


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per completed trial: parameters, metrics, budget, timing, environment."""
    rows = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if POINT_ATTR not in trial.user_attrs:
            continue
        config = trial.user_attrs.get("config", {})
        metrics = {k: v for k, v in trial.user_attrs.get("metrics", {}).items() if k not in HIDDEN_METRICS}
        metrics.pop("robustness_details", None)
        rows.append({
            "trial": trial.number,
            **trial.params,
            **{f"nuisance_{k}": v for k, v in trial.user_attrs.get("nuisance", {}).items()},
            **metrics,
            "batch_size": config.get("batch_size"),
            **({} if "lr" in trial.params else {"learning_rate": config.get("lr")}),
            "wall_seconds": trial.user_attrs.get("wall_seconds"),
            "started": trial.datetime_start,
            "completed": trial.datetime_complete,
        })
    frame = pd.DataFrame(rows)
    if "routing_iters" in frame:  # missing for CNN rows; keep the column integer
        frame["routing_iters"] = frame["routing_iters"].astype("Int64")
    if not frame.empty:
        # One completed trial per point is the engine's invariant; keep the first if not.
        point = ["model", *scientific_columns(study), "seed"]
        frame = frame.sort_values("trial").drop_duplicates(subset=point, keep="first")
    return frame


def failed_frame(study: optuna.Study) -> pd.DataFrame:
    rows = [
        {"trial": t.number, "point": t.user_attrs.get(POINT_ATTR), "reason": t.user_attrs.get(FAILURE_ATTR, "exception")}
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    ]
    return pd.DataFrame(rows)


def scientific_columns(study: optuna.Study) -> list[str]:
    """The columns a table groups by: every stored trial parameter but the model and the seed."""
    names = {k for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) for k in t.params}
    return sorted(names - {"model", "seed"})


def budget_lines(frame: pd.DataFrame, options: RunOptions) -> list[str]:
    """The budget a table came from, stated beside it."""
    def values(column):
        return ", ".join(str(v) for v in sorted(frame[column].dropna().unique())) if column in frame else "?"

    wall = frame["wall_seconds"].sum() if "wall_seconds" in frame else float("nan")
    span = (frame["completed"].max() - frame["started"].min()).total_seconds() if len(frame) else 0.0
    return [
        f"- profile `{options.profile}`: training images per trial {values('train_images')}, "
        f"epochs {values('epochs')}, batch {values('batch_size')}, seeds {values('seed')}, "
        f"test images {values('test_images')}",
        f"- device {values('device')}, torch {values('torch_version')}; {len(frame)} completed trials, "
        f"{wall / 60:.1f} min of trial time ({span / 60:.1f} min wall clock, first start to last finish)",
    ]


def _format_recon(value) -> str:
    if pd.isna(value):
        return "-"
    return "no" if float(value) == 0 else f"yes ({float(value):g})"


PARAM_TITLES = {"routing_iters": "Routing", "recon_weight": "Reconstruction", "augmentation": "Augmentation"}
MODEL_ORDER = {"cnn_paper": 0, "cnn_pool": 1, "capsnet": 2}


def _display(column: str, value) -> Any:
    if pd.isna(value):
        return "-"
    if column == "recon_weight":
        return _format_recon(value)
    if column == "routing_iters":
        return int(value)
    return value


def _sort_key(value) -> tuple:
    return (0, value) if isinstance(value, (int, float)) and not pd.isna(value) else (1, str(value))


def table1(frame: pd.DataFrame, spec: StudySpec, scientific: list[str]) -> pd.DataFrame:
    """Paper Table 1 layout: one row per configuration (model x scientific parameters), test
    error as mean ± sample sd over seeds, with the paper's value where it has one."""
    params = sorted(scientific, key=lambda c: (c not in PARAM_TITLES, list(PARAM_TITLES).index(c)
                                               if c in PARAM_TITLES else 0, c))
    grouped = frame.assign(error=100 * frame["test_error"]).groupby(["model", *params], dropna=False)
    rows = []
    for key, group in grouped:
        values = dict(zip(["model", *params], key))
        std = group["error"].std(ddof=1) if len(group) > 1 else float("nan")
        row = {"_order": (MODEL_ORDER.get(values["model"], 9), *(_sort_key(values[c]) for c in params)),
               "Model": values["model"]}
        row.update({PARAM_TITLES.get(c, c): _display(c, values[c]) for c in params})
        row.update({
            "Test error % (mean ± sd)": f"{group['error'].mean():.2f} ± {std:.2f}" if len(group) > 1
            else f"{group['error'].mean():.2f}",
            "Seeds": len(group),
            "Parameters": f"{int(group['params'].iloc[0]):,}",
            "Train s / seed": f"{group['train_seconds'].mean():.0f}",
            "Paper error %": table1_value(values["model"], values.get("routing_iters"), values.get("recon_weight", 0)
                                          if not pd.isna(values.get("recon_weight", 0)) else 0,
                                          str(values.get("augmentation")), spec.dataset),
        })
        rows.append(row)
    return pd.DataFrame(rows).sort_values("_order").drop(columns="_order").reset_index(drop=True)


def write_latex(table: pd.DataFrame, path: Path, caption: str) -> None:
    styler = table.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1)
    latex = styler.to_latex(hrules=True, caption=caption, position="htbp")
    path.write_text(latex.replace("±", r"$\pm$"))


def save_figure(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _config_label(row: pd.Series) -> str:
    if row["model"] != "capsnet":
        return f"{row['model']} / {row.get('augmentation')}"
    recon = "recon" if float(row.get("recon_weight", 0) or 0) > 0 else "no recon"
    return f"capsnet r{int(row['routing_iters'])} {recon} / {row.get('augmentation')}"


def error_figure(frame: pd.DataFrame, path: Path, title: str) -> None:
    data = frame.assign(config=frame.apply(_config_label, axis=1), error=100 * frame["test_error"])
    order = sorted(data["config"].unique(), key=lambda c: (not c.startswith("cnn"), c))
    height = max(3.0, 0.35 * len(order) + 1.2)
    fig, ax = plt.subplots(figsize=(7.5, height))
    sns.barplot(data=data, y="config", x="error", order=order, errorbar="sd", ax=ax, color="#4c72b0", capsize=0.2)
    # No jitter: it is random, and a rebuilt report must equal the stored one.
    sns.stripplot(data=data, y="config", x="error", order=order, ax=ax, color="black", size=3, jitter=False)
    ax.set_xlabel("test error % (bars: mean over seeds, whiskers: ± sd, dots: seeds)")
    ax.set_ylabel("")
    ax.set_title(title, fontsize=10)
    save_figure(fig, path)


# Optuna's default evaluator (REFERENCES.md 7), named explicitly so the report can say which.
IMPORTANCE_EVALUATOR = optuna.importance.PedAnovaImportanceEvaluator


def importance(frame_study: optuna.Study, frame: pd.DataFrame) -> pd.DataFrame:
    """Optuna's default importance evaluator over CapsNet's scientific parameters."""
    capsnet = [t for t in frame_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
               if t.params.get("model") == "capsnet" and t.number in set(frame["trial"])]
    params = [p for p in ("routing_iters", "recon_weight", "augmentation", "detach_inner")
              if len({t.params.get(p) for t in capsnet}) > 1]
    if len(capsnet) < 4 or not params:
        return pd.DataFrame()
    sub = optuna.create_study(direction="minimize")
    sub.add_trials(capsnet)
    scores = optuna.importance.get_param_importances(sub, evaluator=IMPORTANCE_EVALUATOR(), params=params)
    return pd.DataFrame({"parameter": list(scores), "importance": list(scores.values())})


def importance_figure(table: pd.DataFrame, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 0.5 * len(table) + 1.2))
    sns.barplot(data=table, y="parameter", x="importance", ax=ax, color="#55a868")
    ax.set_title("CapsNet: importance of scientific parameters for test error", fontsize=10)
    ax.set_ylabel("")
    save_figure(fig, path)


def empty_section(spec: StudySpec) -> Section:
    return Section(spec.title, "_No completed trials yet._\n", [])


def loss_convention_line(study: optuna.Study) -> list[str]:
    """Which margin-loss convention CapsNet trials used: it sets how much reconstruction weighs."""
    conventions = sorted({
        t.user_attrs.get("config", {}).get("model_options", {}).get("margin_convention", "paper")
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.params.get("model") == "capsnet"
    })
    if not conventions:
        return []
    meaning = {"paper": "summed over classes (the paper's formula)",
               "official": "averaged over classes and halved (the official code's; reconstruction weighs ~20x more)"}
    return [f"- CapsNet loss: margin loss {'; '.join(meaning[c] for c in conventions)}, plus recon_weight x the "
            "summed squared reconstruction error"]


def accuracy_section(spec: StudySpec, study: optuna.Study, options: RunOptions, out: Path) -> Section:
    stem, frame = file_stem(spec), trials_frame(study)
    if frame.empty:
        return empty_section(spec)
    files = [out / f"{stem}.csv", out / f"{stem}-table1.md", out / f"{stem}-table1.tex", out / f"{stem}-error.png"]
    frame.to_csv(files[0], index=False)
    table = table1(frame, spec, scientific_columns(study))
    files[1].write_text(table.to_markdown(index=False) + "\n")
    budget = budget_lines(frame, options) + loss_convention_line(study)
    write_latex(table, files[2], f"{spec.title} on {spec.dataset} ({options.profile} profile); "
                                 "test error mean $\\pm$ sample standard deviation over seeds.")
    error_figure(frame, files[3], f"{spec.title}\n{spec.dataset}, profile {options.profile}")
    lines = [*budget, "", table.to_markdown(index=False), "",
             "Test error in %, mean ± sample standard deviation (n-1) over seeds. "
             "Paper values are from the paper's own protocol (full MNIST, shifts of up to 2 px, "
             "~300k steps) and are shown for orientation, not as a like-for-like comparison.",
             "", f"![test error per configuration]({files[3].name})", ""]
    ranking = importance(study, frame)
    if not ranking.empty:
        files += [out / f"{stem}-importance.md", out / f"{stem}-importance.png"]
        files[-2].write_text(ranking.to_markdown(index=False, floatfmt=".3f") + "\n")
        importance_figure(ranking, files[-1])
        lines += ["Parameter importance for CapsNet test error over the scientific parameters "
                  f"({IMPORTANCE_EVALUATOR.__name__}, optuna {optuna.__version__}; normalised to sum 1):", "",
                  ranking.to_markdown(index=False, floatfmt=".3f"), "",
                  f"![importance]({files[-1].name})", ""]
    lines += _failures(study)
    lines.append("Files: " + ", ".join(f"[{f.name}]({f.name})" for f in files))
    return Section(f"{spec.title} — {spec.dataset}", "\n".join(lines) + "\n", files)


def _failures(study: optuna.Study) -> list[str]:
    failed = failed_frame(study)
    if failed.empty:
        return []
    return ["Failed trials:", "", failed.to_markdown(index=False), ""]


def _mean_sd(values: pd.Series, scale: float = 100.0) -> str:
    values = values.dropna() * scale
    if values.empty:
        return "-"
    if len(values) == 1:
        return f"{values.iloc[0]:.2f}"
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}"


def affnist_section(spec: StudySpec, study: optuna.Study, options: RunOptions, out: Path) -> Section:
    from studies.report.paper import AFFNIST_ACCURACY

    stem, frame = file_stem(spec), trials_frame(study)
    if frame.empty:
        return empty_section(spec)
    files = [out / f"{stem}.csv", out / f"{stem}-table.md", out / f"{stem}-table.tex"]
    frame.to_csv(files[0], index=False)
    set_names = sorted(frame["robustness_set"].unique())
    rows = []
    for model, group in frame.groupby("model"):
        reached = group[group["reached_target"].astype(bool)]
        rows.append({
            "Model": model,
            "Parameters": f"{int(group['params'].iloc[0]):,}",
            "Target clean acc. %": f"{100 * group['target_accuracy'].iloc[0]:.1f}",
            "Reached target": f"{len(reached)}/{len(group)} seeds",
            "Epoch reached": ", ".join(str(int(e)) for e in reached["matched_epoch"]) or "-",
            "Clean acc. % (expanded MNIST)": _mean_sd(reached["clean_accuracy"]),
            f"{' / '.join(set_names)} acc. %": _mean_sd(reached["affnist_accuracy"]),
            "Unmatched models' acc. %": _mean_sd(group["unmatched_affnist_accuracy"].astype(float)),
            "Paper affNIST acc. %": AFFNIST_ACCURACY["capsnet" if model == "capsnet" else "cnn"],
        })
    table = pd.DataFrame(rows)
    files[1].write_text(table.to_markdown(index=False) + "\n")
    write_latex(table, files[2], f"{spec.title} ({options.profile} profile); mean $\\pm$ sample sd over seeds "
                                 "that reached the target.")
    details = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))[0].user_attrs["metrics"]["robustness_details"]
    lines = [*budget_lines(frame, options),
             f"- robustness test set: **{', '.join(set_names)}** ({json.dumps(details)})", "",
             table.to_markdown(index=False), "",
             "Each model is tested on the robustness set at the first epoch whose clean "
             "expanded-MNIST test accuracy reached the target; a seed that never reached it is "
             "not in the matched columns (its final model's accuracy is shown apart). The paper's "
             "79% / 66% are for the official affNIST at 99.2% clean accuracy.", ""]
    if any("style" in name for name in set_names):
        lines += ["The robustness set here is generated, not the official affNIST: its numbers "
                  "are not comparable with the paper's affNIST results.", ""]
    lines += _failures(study)
    lines.append("Files: " + ", ".join(f"[{f.name}]({f.name})" for f in files))
    return Section(f"{spec.title} — {spec.dataset}", "\n".join(lines) + "\n", files)


def sweep_frame(study: optuna.Study, frame: pd.DataFrame) -> pd.DataFrame:
    """Long form: model, train augmentation, seed, transform, amount, accuracy."""
    rows = []
    kept = set(frame["trial"])
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if trial.number not in kept:
            continue
        for row in json.loads(trial.user_attrs.get("rows", "[]")):
            rows.append({"model": trial.params["model"], "train_augmentation": trial.params.get("augmentation"),
                         "seed": trial.params["seed"], **row})
    return pd.DataFrame(rows)


def sweep_summary(sweep: pd.DataFrame, transform: str, marks: list[int]) -> pd.DataFrame:
    """Accuracy at chosen +-amounts (mean of both signs and seeds) and the normalised AUC."""
    data = sweep[sweep["transform"] == transform]
    rows = []
    for (model, aug), group in data.groupby(["model", "train_augmentation"]):
        per_amount = group.groupby("amount")["accuracy"].mean()
        row = {"Model": model, "Train augmentation": aug}
        for mark in marks:
            chosen = per_amount[per_amount.index.isin([mark, -mark])]
            label = f"±{mark}" if mark else "0"
            row[f"acc. % at {label}"] = f"{100 * chosen.mean():.1f}" if len(chosen) else "-"
        amounts = per_amount.index.to_numpy(dtype=float)
        span = amounts.max() - amounts.min()
        auc = float(((per_amount.to_numpy()[1:] + per_amount.to_numpy()[:-1]) / 2 * (amounts[1:] - amounts[:-1])).sum() / span) if span else float("nan")
        row["AUC (mean acc. %)"] = f"{100 * auc:.1f}"
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


def rotation_section(spec: StudySpec, study: optuna.Study, options: RunOptions, out: Path) -> Section:
    stem, frame = file_stem(spec), trials_frame(study)
    if frame.empty:
        return empty_section(spec)
    sweep = sweep_frame(study, frame)
    files = [out / f"{stem}.csv", out / f"{stem}-sweep.csv"]
    frame.to_csv(files[0], index=False)
    sweep.to_csv(files[1], index=False)
    lines = [*budget_lines(frame, options), ""]
    for transform, marks, unit, xlabel in [
        ("rotation", [0, 30, 60, 90], "°", "rotation of the test digits (degrees, counter-clockwise)"),
        ("translation", [0, 2, 4, 6], " px", "horizontal shift of the test digits (pixels, zero fill)"),
    ]:
        summary = sweep_summary(sweep, transform, marks)
        md, tex, png = (out / f"{stem}-{transform}.md", out / f"{stem}-{transform}.tex", out / f"{stem}-{transform}.png")
        md.write_text(summary.to_markdown(index=False) + "\n")
        write_latex(summary, tex, f"Accuracy under test-time {transform} ({options.profile} profile).")
        sweep_figure(sweep, transform, png, xlabel, f"{spec.dataset}: accuracy vs {transform}, profile {options.profile}")
        files += [md, tex, png]
        amounts = ", ".join(f"{a:g}" for a in sorted(sweep[sweep["transform"] == transform]["amount"].unique()))
        lines += [f"### {transform.capitalize()}", "", f"Amounts ({unit.strip() or 'degrees'}): {amounts}.", "",
                  summary.to_markdown(index=False), "",
                  "Accuracy averaged over +a and -a and over seeds; AUC is the mean accuracy over "
                  "the whole sweep (trapezoid rule).", "", f"![{transform} sweep]({png.name})", ""]
    lines += _failures(study)
    lines.append("Files: " + ", ".join(f"[{f.name}]({f.name})" for f in files))
    return Section(f"{spec.title} — {spec.dataset}", "\n".join(lines) + "\n", files)


SECTION_BUILDERS = {"accuracy": accuracy_section, "affnist": affnist_section, "rotation": rotation_section}


def write_report(sections: list[Section], options: RunOptions, out: Path) -> Path:
    import platform

    import torch

    lines = [
        f"# capsbench results — profile `{options.profile}`",
        "",
        "Rebuilt from the stored trials by `make report` (no training). Every table states the "
        "budget it came from. Profiles other than `paper` are NOT the paper's protocol; "
        "their numbers show trends at a small budget and are not comparable to published ones.",
        "",
        f"Report built with torch {torch.__version__}, optuna {optuna.__version__}, "
        f"Python {platform.python_version()}.",
        "",
    ]
    for section in sections:
        lines += [f"## {section.title}", "", section.markdown]
    path = out / "REPORT.md"
    path.write_text("\n".join(lines))
    return path


def extra_sections(out: Path) -> list[Section]:
    """Sections that other tools left as Markdown in the results directory (the benchmark)."""
    sections = []
    for table in sorted(out.glob("throughput-*.md")):
        # The benchmark's own file starts at heading level 1; nest it under this section.
        body = "\n".join(("##" + line) if line.startswith("#") else line for line in table.read_text().splitlines()[1:])
        csv = table.with_suffix(".csv")
        body += f"\n\nFiles: [{csv.name}]({csv.name}), [{table.name}]({table.name})\n"
        sections.append(Section(f"Throughput ({table.stem.removeprefix('throughput-')})", body, [table]))
    return sections


def build_report(specs: list[StudySpec], options: RunOptions, out: Path) -> Path:
    sections = []
    for spec in specs:
        if spec.kind in SECTION_BUILDERS:
            study = open_study(spec, options)
            sections.append(SECTION_BUILDERS[spec.kind](spec, study, options, out))
    return write_report(sections + extra_sections(out), options, out)
