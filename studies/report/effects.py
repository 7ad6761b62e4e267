"""Paired comparisons over seeds: every scientific factor within a model, and CapsNet against
each CNN, with the statistics of `studies.report.stats`, written as `<study>-effects.*`.

A factor's effect is `level - baseline` (the baseline being the first value the spec lists) on
one metric, paired by seed within each combination of the model's other scientific parameters
(a stratum) where both levels were trained; with several strata the main effect averages each
seed's differences over them. Models are compared at the CapsNet configuration the paper
recommends (the model's defaults) where the grid has it, paired by seed within each value of the
parameters both share (e.g. the augmentation).

The spec's declared primary comparisons (studies.spec.study.Primary) are marked and get Holm's
adjustment over the study's primary family; every other row is exploratory. A row whose two
sides trained on different budgets (images seen, batch size) says so and is never resolved.
"""
from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import models
from studies.report import stats
from studies.report.figures import save_figure, write_formatted
from studies.spec.study import REFERENCE_MODELS, Primary, StudySpec

REFERENCE_MODEL = REFERENCE_MODELS[0]
AVERAGED = "averaged over "
UNEQUAL = "unequal budgets"


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


def budgets(rows: pd.DataFrame) -> set[tuple]:
    """The budgets the trials of `rows` trained on: (images seen, batch size)."""
    columns = [c for c in ("images_seen", "batch_size") if c in rows]
    return set(rows[columns].itertuples(index=False, name=None)) if columns else set()


@dataclass(frozen=True)
class Side:
    """One side of a comparison: its per-seed values and the trials they came from."""

    values: pd.Series
    rows: pd.DataFrame


def _side(rows: pd.DataFrame, metric: Metric) -> Side:
    return Side(_by_seed(rows, metric), rows)


def _row(metric: Metric, comparison: str, within: str, a: Side, b: Side, **keys: Any) -> dict | None:
    """b - a over the seeds both have; `keys` say what was compared (factor, baseline, level, ...)."""
    seeds = sorted(set(a.values.index) & set(b.values.index))
    if not seeds:
        return None
    result = stats.paired(a.values.loc[seeds].to_numpy(), b.values.loc[seeds].to_numpy(), bounds=(-100.0, 100.0))
    both = budgets(a.rows) | budgets(b.rows)
    return {
        "metric": metric.label, "comparison": comparison, "within": within, "n": result.n,
        "mean_difference": result.mean, "sd": result.sd, "ci95_low": result.ci_low, "ci95_high": result.ci_high,
        "p_paired_t": result.p_t, "p_sign_flip_exact": result.p_sign_flip,
        "budget": "equal" if len(both) == 1 else UNEQUAL,
        "detectable_80pct_power": result.detectable, "seeds_80pct_power_low": result.seeds_low,
        "seeds_80pct_power_high": result.seeds_high, "resolved_unadjusted": result.resolved,
        "lower_is_better": metric.lower_is_better, "metric_column": metric.column,
        "baseline_mean": float(a.values.loc[seeds].mean()), "level_mean": float(b.values.loc[seeds].mean()), **keys,
    }


def _contrast(rows: pd.DataFrame, model: str, factor: str, base, level, others: list[str], metric: Metric,
              label: str) -> list[dict]:
    strata = [((), rows)] if not others else list(rows.groupby(others, dropna=False))
    found = []
    for key, stratum in strata:
        key = key if isinstance(key, tuple) else (key,)
        a = _side(stratum[stratum[factor] == base], metric)
        b = _side(stratum[stratum[factor] == level], metric)
        if len(a.values) and len(b.values):
            found.append((dict(zip(others, key)), a, b))
    keys = {"factor": factor, "model": model, "baseline": base, "level": level}
    out = []
    if len(found) > 1:
        seeds = sorted(set.intersection(*(set(a.values.index) & set(b.values.index) for _, a, b in found)))
        if seeds:
            mean_b = sum(b.values.loc[seeds] for _, _, b in found) / len(found)
            mean_a = sum(a.values.loc[seeds] for _, a, _ in found) / len(found)
            varied = [o for o in others if len({values[o] for values, _, _ in found}) > 1]
            levels = {o: sorted({values[o] for values, _, _ in found}, key=str) for o in varied}
            out.append(_row(metric, label, AVERAGED + "; ".join(
                f"{o} in {{{', '.join(map(str, v))}}}" for o, v in levels.items()),
                Side(mean_a, pd.concat([a.rows for _, a, _ in found])),
                Side(mean_b, pd.concat([b.rows for _, _, b in found])), stratum=None, **keys))
    for values, a, b in found:
        out.append(_row(metric, label, _describe(values), a, b, stratum=values, **keys))
    return [row for row in out if row is not None]


def factor_effects(frame: pd.DataFrame, spec: StudySpec, scientific: list[str], metric: Metric) -> list[dict]:
    rows = []
    for model, sub in frame.groupby("model", sort=False):
        varied = [c for c in scientific if c in sub and sub[c].nunique(dropna=True) > 1]
        for factor in varied:
            levels = _levels(spec, model, factor, sub[factor])
            others = [c for c in varied if c != factor]
            for level in levels[1:]:
                rows += _contrast(sub, model, factor, levels[0], level, others, metric,
                                  f"{model}: {factor} {level} − {levels[0]}")
    return rows


def _millions(rows: pd.DataFrame) -> str:
    return f"{int(rows['params'].iloc[0]) / 1e6:.1f}M parameters" if "params" in rows and len(rows) else ""


def model_effects(frame: pd.DataFrame, scientific: list[str], metric: Metric,
                  reference: str = REFERENCE_MODEL) -> list[dict]:
    """`reference` (CapsNet) minus every other model, at its default configuration where the grid
    has it; the label states both models' parameter counts."""
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
            if not len(mine):
                continue
            label = (f"{reference} ({'; '.join(filter(None, [_describe(chosen), _millions(mine)]))}) − {other} "
                     f"({_millions(group)})")
            row = _row(metric, label, _describe(values), _side(group, metric), _side(mine, metric), stratum=values,
                       factor="model", model=None, baseline=other, level=reference)
            if row is not None:
                rows.append(row)
    return rows


def _same(a, b) -> bool:
    """Spec values (TOML) against frame values (pandas): numbers by value, the rest as text."""
    if a is None or b is None or (isinstance(b, float) and np.isnan(b)):
        return a is None and (b is None or (isinstance(b, float) and np.isnan(b)))
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


def _matches(row: dict, primary: Primary) -> bool:
    if row["metric_column"] not in primary.metrics or row["factor"] != primary.factor:
        return False
    if not (_same(primary.baseline, row["baseline"]) and _same(primary.level, row["level"])):
        return False
    if primary.factor != "model" and row["model"] != primary.model:
        return False
    stratum = row["stratum"]
    if primary.within:
        return stratum is not None and all(k in stratum and _same(v, stratum[k]) for k, v in primary.within.items())
    return True


@dataclass(frozen=True)
class Unanswered:
    """A declared primary comparison (one metric, one level) with no row to answer it, and why."""

    primary: Primary
    metric: str
    at_level: float | None
    reason: str


def _answer(rows: list[dict], primary: Primary, metric: str, at_level: float | None) -> int | str:
    """The index of the row that answers one declared comparison (its metric, at its level), or why
    none does: the stratum its `within` names, or else the main effect (averaged over strata)
    where there is one, else the only stratum."""
    group = [i for i, row in enumerate(rows) if _matches(row, primary) and row["metric_column"] == metric
             and _same(at_level, row.get("at_level"))]
    averaged = [i for i in group if rows[i]["stratum"] is None]
    if not primary.within and averaged:
        return averaged[0]
    strata = [i for i in group if rows[i]["stratum"] is not None]
    if len(strata) == 1:
        return strata[0]
    if not strata:
        return "no data: a side was not trained in this profile" + (
            ", or not every seed's curve reached the level" if at_level is not None else "")
    return (f"{len(strata)} strata match ({'; '.join(rows[i]['within'] for i in strata)}): name the other "
            "varied parameters in `within`")


def mark_primary(rows: list[dict], spec: StudySpec,
                 levels: tuple[float, ...] | None = None) -> tuple[pd.DataFrame, list[Unanswered]]:
    """The effects frame with `primary`, `p_holm` and `resolved`, and the declared comparisons no
    row answers. The primary family is every declared comparison on each of its metrics (at each of
    `levels`, for curves), fixed before anything is looked at: one without an answer, or without a
    p-value, counts in Holm's adjustment as p = 1, so a missing side never shrinks the family.
    Resolved: primary, the Holm-adjusted p below 5%; exploratory, the unadjusted interval excludes 0;
    never at unequal budgets or with fewer than 3 seeds."""
    order: list[float] = [np.nan] * len(rows)
    unanswered, family = [], []
    for index, primary in enumerate(spec.primary):
        for rank, (metric, at) in enumerate((m, at) for m in primary.metrics for at in (levels or (None,))):
            answer = _answer(rows, primary, metric, at)
            if isinstance(answer, str):
                unanswered.append(Unanswered(primary, metric, at, answer))
                family.append(None)
            else:
                order[answer] = index + rank / (len(primary.metrics) * len(levels or (None,)) + 1)
                family.append(answer)
    frame = effects_frame(rows)
    frame["primary_order"] = order
    frame["primary"] = frame["primary_order"].notna()
    p_family = [1.0 if i is None or pd.isna(frame.at[i, "p_paired_t"]) else float(frame.at[i, "p_paired_t"])
                for i in family]
    adjusted = stats.holm(p_family) if family else np.array([])
    frame["p_holm"] = np.nan
    for i, value in zip(family, adjusted):
        if i is not None:
            frame.at[i, "p_holm"] = value
    frame["family_size"] = len(family)
    usable = (frame["budget"] == "equal") & (frame["n"] >= stats.MIN_SEEDS)
    frame["resolved"] = usable & np.where(frame["primary"], frame["p_holm"] < stats.ALPHA,
                                          frame["resolved_unadjusted"].astype(bool))
    return frame[COLUMNS + HIDDEN], unanswered


COLUMNS = ["metric", "comparison", "within", "at_level", "n", "mean_difference", "sd", "ci95_low", "ci95_high", "p_paired_t",
           "p_sign_flip_exact", "primary", "p_holm", "resolved", "budget", "detectable_80pct_power",
           "seeds_80pct_power_low", "seeds_80pct_power_high"]
# Kept for the report's own use (findings, figures), not written to the effects file.
HIDDEN = ["lower_is_better", "metric_column", "factor", "model", "baseline", "level", "stratum", "baseline_mean",
          "level_mean", "primary_order", "family_size"]


def effects_frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in ("primary", "p_holm", "resolved")]
                         + ["resolved_unadjusted"] + [c for c in HIDDEN if c not in ("primary_order", "family_size")])
    return frame.astype({"seeds_80pct_power_low": "Int64", "seeds_80pct_power_high": "Int64"})


def _fmt(value, digits=2) -> str:
    return "-" if value is None or pd.isna(value) else f"{value:.{digits}f}"


def seeds_range(low, high) -> str:
    """The seeds for 80% power over the sd's 95% interval, in words."""
    if pd.isna(low):
        return "-"
    if pd.isna(high):
        return f"{int(low)} to more than {stats.MAX_SEEDS_SEARCHED}"
    return str(int(low)) if low == high else f"{int(low)}-{int(high)}"


def display_table(effects: pd.DataFrame) -> pd.DataFrame:
    shown = pd.DataFrame({
        "Metric": effects["metric"],
        "Comparison": effects["comparison"],
        "Within": effects["within"].replace("", "-"),
        "At validation acc. %": effects["at_level"].map(lambda v: "-" if pd.isna(v) else f"{100 * v:g}"),
        "n": effects["n"],
        "Mean difference (pp)": effects["mean_difference"].map(lambda v: f"{v:+.2f}"),
        "95% CI (t)": [f"[{_fmt(lo)}, {_fmt(hi)}]" for lo, hi in zip(effects["ci95_low"], effects["ci95_high"])],
        "p (paired t)": effects["p_paired_t"].map(lambda v: _fmt(v, 3)),
        "p (sign-flip, exact)": effects["p_sign_flip_exact"].map(lambda v: _fmt(v, 3)),
        "Primary": effects["primary"].map({True: "primary", False: "exploratory"}),
        "p (Holm)": effects["p_holm"].map(lambda v: _fmt(v, 3)),
        "Resolved": effects["resolved"].map({True: "yes", False: "no"}),
        "Budget": effects["budget"],
        "Resolvable at 80% power (pp)": effects["detectable_80pct_power"].map(lambda v: _fmt(v)),
        "Seeds for 80% power": [seeds_range(lo, hi) for lo, hi in zip(effects["seeds_80pct_power_low"],
                                                                        effects["seeds_80pct_power_high"])],
    })
    if effects["at_level"].isna().all():  # not a comparison along curves
        shown = shown.drop(columns="At validation acc. %")
    return shown


EXPLANATION = (
    "Each row is a paired comparison over seeds (the same seed gives both sides the same data order "
    "and augmentation stream): the mean of the per-seed differences in percentage points, its 95% "
    "confidence interval from Student's t with n - 1 degrees of freedom, the paired t-test's p-value "
    "and the exact two-sided sign-flip permutation test's (which cannot go below 2/2^n: 0.25 with 3 "
    "seeds). Primary rows are the comparisons the spec declares before anything is trained; p (Holm) "
    "is Holm's step-down adjustment over them, and a primary row is resolved when it is below 0.05. "
    "Exploratory rows are every other comparison, resolved when their unadjusted interval excludes 0: "
    "leads to follow up, not findings. Nothing is resolved with fewer than 3 seeds or at unequal "
    "budgets (images seen or batch size differing between the two sides). Resolvable at 80% power: "
    "the smallest true difference this many seeds would resolve 80% of the time at the observed sd "
    "(paired t, 5% level). Seeds for 80% power: how many seeds a difference of the observed size "
    "would need, from the low to the high end of the 95% interval of the sd (with 3 seeds the sd is "
    "known only to within about 0.5x to 6.3x).")


def unresolved_sentences(effects: pd.DataFrame, standard_hint: str) -> list[str]:
    """In words, for every exploratory comparison that is not resolved (primary ones are findings)."""
    sentences = []
    for _, row in effects[~effects["resolved"].astype(bool) & ~effects["primary"].astype(bool)].iterrows():
        within = f" ({row['within']})" if row["within"] else ""
        head = f"- {row['metric']}, {row['comparison']}{within}: {row['mean_difference']:+.2f} pp"
        if row["budget"] != "equal":
            sentences.append(f"{head}: the two sides trained on unequal budgets; not a comparison.")
            continue
        if row["n"] < 2:
            sentences.append(f"{head} from a single seed: no interval; run more seeds, or {standard_hint}.")
            continue
        sentences.append(f"{head}, 95% CI [{_fmt(row['ci95_low'])}, {_fmt(row['ci95_high'])}], n = {row['n']}: "
                         f"not resolved; {power_phrase(row)}, or {standard_hint}.")
    return sentences


def power_phrase(row: pd.Series) -> str:
    """What the seeds can resolve, with the uncertainty of the sd."""
    if pd.isna(row["detectable_80pct_power"]):
        return "no spread to judge power by"
    seeds = seeds_range(row["seeds_80pct_power_low"], row["seeds_80pct_power_high"])
    return (f"{row['n']} seeds resolve a true difference of {row['detectable_80pct_power']:.2f} pp with 80% power; "
            f"one of the observed size would need {seeds} seeds (over the sd's 95% interval)")


def effects_figure(effects: pd.DataFrame, path: Path, title: str) -> None:
    labels = [("★ " if p else "") + f"{c}" + (f"\n{w}" if w else "") + ("" if pd.isna(at) else f" at {100 * at:g}%")
              for c, w, p, at in zip(effects["comparison"], effects["within"], effects["primary"], effects["at_level"])]
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
        ax.set_xlabel(f"{metric}: difference in pp\n(95% t interval; red: resolved; ★ primary)")
    fig.suptitle(textwrap.fill(title, int(12 * fig.get_figwidth())), fontsize=10)  # about 12 characters an inch
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
