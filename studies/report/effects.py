"""Paired comparisons over seeds: every scientific factor within a model, and CapsNet against
each CNN, with the statistics of `studies.report.stats`, written as `<study>-effects.*`.

A factor's effect is `level - baseline` (the baseline being the first value the spec lists) on
one metric, paired by seed within each combination of the model's other scientific parameters
(a stratum) where both levels were trained; with several strata the main effect averages each
seed's differences over them. Models are compared at the CapsNet configuration the paper
recommends (the model's defaults) where the grid has it, paired by seed within each value of the
parameters both share (e.g. the augmentation).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import models
from studies.report import stats
from studies.report.figures import save_figure, write_formatted
from studies.spec.study import StudySpec

REFERENCE_MODEL = "capsnet"


@dataclass(frozen=True)
class Metric:
    column: str  # in the trials frame, a fraction
    label: str  # as printed, in %
    lower_is_better: bool


def _levels(spec: StudySpec, model: str, factor: str, present) -> list:
    """The factor's values in the spec's order (the first listed is the baseline)."""
    ordered = []
    for arm in spec.arms:
        if arm.model == model:
            ordered += [v for v in arm.scientific.get(factor, ()) if v not in ordered]
    present = list(pd.unique(present.dropna()))
    return [v for v in ordered if v in present] + [v for v in present if v not in ordered]


def _describe(values: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


def _by_seed(rows: pd.DataFrame, metric: Metric) -> pd.Series:
    return (100 * rows.set_index("seed")[metric.column].astype(float)).dropna()


def _row(metric: Metric, comparison: str, within: str, a: pd.Series, b: pd.Series) -> dict | None:
    """b - a over the seeds both have."""
    seeds = sorted(set(a.index) & set(b.index))
    if not seeds:
        return None
    result = stats.paired(a.loc[seeds].to_numpy(), b.loc[seeds].to_numpy())
    return {
        "metric": metric.label, "comparison": comparison, "within": within, "n": result.n,
        "mean_difference": result.mean, "sd": result.sd, "ci95_low": result.ci_low, "ci95_high": result.ci_high,
        "p_paired_t": result.p_t, "p_sign_flip_exact": result.p_sign_flip, "resolved": result.resolved,
        "seeds_for_80pct_power": result.seeds_needed, "lower_is_better": metric.lower_is_better,
    }


def _contrast(rows: pd.DataFrame, factor: str, base, level, others: list[str], metric: Metric,
              label: str) -> list[dict]:
    strata = [((), rows)] if not others else list(rows.groupby(others, dropna=False))
    found = []
    for key, stratum in strata:
        key = key if isinstance(key, tuple) else (key,)
        a = _by_seed(stratum[stratum[factor] == base], metric)
        b = _by_seed(stratum[stratum[factor] == level], metric)
        if len(a) and len(b):
            found.append((dict(zip(others, key)), a, b))
    out = []
    if len(found) > 1:
        seeds = sorted(set.intersection(*(set(a.index) & set(b.index) for _, a, b in found)))
        if seeds:
            mean_b = sum(b.loc[seeds] for _, _, b in found) / len(found)
            mean_a = sum(a.loc[seeds] for _, a, _ in found) / len(found)
            varied = [o for o in others if len({values[o] for values, _, _ in found}) > 1]
            levels = {o: sorted({values[o] for values, _, _ in found}, key=str) for o in varied}
            out.append(_row(metric, label, "averaged over " + "; ".join(
                f"{o} in {{{', '.join(map(str, v))}}}" for o, v in levels.items()), mean_a, mean_b))
    for values, a, b in found:
        out.append(_row(metric, label, _describe(values), a, b))
    return [row for row in out if row is not None]


def factor_effects(frame: pd.DataFrame, spec: StudySpec, scientific: list[str], metric: Metric) -> list[dict]:
    rows = []
    for model, sub in frame.groupby("model", sort=False):
        varied = [c for c in scientific if c in sub and sub[c].nunique(dropna=True) > 1]
        for factor in varied:
            levels = _levels(spec, model, factor, sub[factor])
            others = [c for c in varied if c != factor]
            for level in levels[1:]:
                rows += _contrast(sub, factor, levels[0], level, others, metric,
                                  f"{model}: {factor} {level} − {levels[0]}")
    return rows


def model_effects(frame: pd.DataFrame, scientific: list[str], metric: Metric,
                  reference: str = REFERENCE_MODEL) -> list[dict]:
    """`reference` (CapsNet) minus every other model, at its default configuration where the grid
    has it."""
    if reference not in set(frame["model"]):
        return []
    ours = frame[frame["model"] == reference]
    defaults = models.make_config(reference)
    own = [c for c in scientific if c in models.option_names(reference) and ours[c].nunique(dropna=True) > 0]
    chosen = {c: getattr(defaults, c) for c in own if (ours[c] == getattr(defaults, c)).any()}
    for column, value in chosen.items():
        ours = ours[ours[column] == value]
    rows = []
    for other, theirs in frame[frame["model"] != reference].groupby("model", sort=False):
        shared = [c for c in scientific if c in theirs and theirs[c].notna().any() and c not in own]
        groups = [((), theirs)] if not shared else list(theirs.groupby(shared, dropna=False))
        for key, group in groups:
            key = key if isinstance(key, tuple) else (key,)
            values = dict(zip(shared, key))
            mine = ours
            for column, value in values.items():
                mine = mine[mine[column] == value]
            label = f"{reference}" + (f" ({_describe(chosen)})" if chosen else "") + f" − {other}"
            row = _row(metric, label, _describe(values), _by_seed(group, metric), _by_seed(mine, metric))
            if row is not None and len(mine):
                rows.append(row)
    return rows


COLUMNS = ["metric", "comparison", "within", "n", "mean_difference", "sd", "ci95_low", "ci95_high", "p_paired_t",
           "p_sign_flip_exact", "resolved", "seeds_for_80pct_power"]


def effects_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=COLUMNS + ["lower_is_better"])


def _fmt(value, digits=2) -> str:
    return "-" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def display_table(effects: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "Metric": effects["metric"],
        "Comparison": effects["comparison"],
        "Within": effects["within"].replace("", "-"),
        "n": effects["n"],
        "Mean difference (pp)": effects["mean_difference"].map(lambda v: f"{v:+.2f}"),
        "95% CI (t)": [f"[{_fmt(lo)}, {_fmt(hi)}]" for lo, hi in zip(effects["ci95_low"], effects["ci95_high"])],
        "p (paired t)": effects["p_paired_t"].map(lambda v: _fmt(v, 3)),
        "p (sign-flip, exact)": effects["p_sign_flip_exact"].map(lambda v: _fmt(v, 3)),
        "Resolved": effects["resolved"].map({True: "yes", False: "no"}),
        "Seeds for 80% power": effects["seeds_for_80pct_power"].map(
            lambda v: "-" if v is None or pd.isna(v) else str(int(v))),
    })


EXPLANATION = (
    "Each row is a paired comparison over seeds (the same seed gives both sides the same data order "
    "and augmentation stream): the mean of the per-seed differences in percentage points, its 95% "
    "confidence interval from Student's t with n - 1 degrees of freedom, the paired t-test's p-value "
    "and the exact two-sided sign-flip permutation test's (which cannot go below 2/2^n: 0.25 with 3 "
    "seeds). Resolved: the interval excludes 0. Seeds for 80% power: how many seeds a paired t-test "
    "at the 5% level would need to resolve a true difference of the observed size, given the "
    "observed sd of the differences.")


def unresolved_sentences(effects: pd.DataFrame, standard_hint: str) -> list[str]:
    """In words, for every comparison whose interval covers 0."""
    sentences = []
    for _, row in effects[~effects["resolved"].astype(bool)].iterrows():
        within = f" ({row['within']})" if row["within"] else ""
        head = f"- {row['metric']}, {row['comparison']}{within}: {row['mean_difference']:+.2f} pp"
        if row["n"] < 2:
            sentences.append(f"{head} from a single seed: no interval; run more seeds, or {standard_hint}.")
            continue
        needed = row["seeds_for_80pct_power"]
        seeds = (f"about {int(needed)} seeds at this budget would resolve a difference of this size"
                 if needed is not None and not pd.isna(needed) else
                 "no practical number of seeds at this budget would resolve a difference this small")
        sentences.append(f"{head}, 95% CI [{_fmt(row['ci95_low'])}, {_fmt(row['ci95_high'])}], n = {row['n']}: "
                         f"not resolved at this budget; {seeds} (paired t-test, 80% power, observed sd), "
                         f"or {standard_hint}.")
    return sentences


def effects_figure(effects: pd.DataFrame, path: Path, title: str) -> None:
    labels = [f"{c}" + (f"\n{w}" if w else "") for c, w in zip(effects["comparison"], effects["within"])]
    metrics = list(dict.fromkeys(effects["metric"]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.5 * len(metrics), 0.55 * len(effects) + 1.5), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        rows = effects[effects["metric"] == metric]
        y = np.arange(len(rows))[::-1]
        mean = rows["mean_difference"].to_numpy(dtype=float)
        low = rows["ci95_low"].to_numpy(dtype=float)
        high = rows["ci95_high"].to_numpy(dtype=float)
        error = np.vstack([mean - low, high - mean])
        colours = ["#c44e52" if r else "#4c72b0" for r in rows["resolved"]]
        ax.errorbar(mean, y, xerr=np.nan_to_num(error), fmt="none", ecolor="gray", capsize=3)
        ax.scatter(mean, y, c=colours, zorder=3)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks(y, [labels[i] for i in rows.index.map(effects.index.get_loc)], fontsize=7)
        ax.set_xlabel(f"{metric}: difference in pp (95% t interval; red: resolved)")
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def write_effects(effects: pd.DataFrame, out: Path, stem: str, caption: str) -> list[Path]:
    """<stem>-effects.csv (every column), .md and booktabs .tex (the display table), .png."""
    files = [out / f"{stem}-effects.csv"]
    effects[COLUMNS].to_csv(files[0], index=False)
    files += write_formatted(display_table(effects), out, f"{stem}-effects", caption)
    if len(effects):
        figure = out / f"{stem}-effects.png"
        effects_figure(effects.reset_index(drop=True), figure, caption)
        files.append(figure)
    return files
