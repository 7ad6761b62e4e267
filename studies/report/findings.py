"""The findings at the top of REPORT.md: every primary comparison a study declares, whatever its
sign, each with its number, its 95% interval, its Holm-adjusted p-value and its budget, written
from the same effects tables the sections show. Exploratory rows are never findings."""
from __future__ import annotations

import pandas as pd

from studies.report.effects import UNEQUAL, Unanswered, power_phrase
from studies.report.trials import StudyTrials


def budget_phrase(trials: StudyTrials) -> str:
    frame = trials.frame

    def values(column: str) -> str:
        return ", ".join(f"{int(v):,}" for v in sorted(frame[column].unique()))

    dtype = ", ".join(sorted(frame["dtype"].unique()))
    device = ", ".join(sorted(frame["device"].unique()))
    return (f"{values('train_images')} training images, {values('epochs')} epoch(s), batch {values('batch_size')}, "
            f"{values('test_images')} test images, {frame['seed'].nunique()} seeds, {device}, {dtype}, "
            f"profile `{trials.options.profile}`")


def verdict(row: pd.Series, family: int) -> str:
    if row["budget"] == UNEQUAL:
        return (f"{row['mean_difference']:+.2f} pp, but the two sides trained on unequal budgets: not a "
                "comparison")
    if row["n"] < 2:
        return f"{row['mean_difference']:+.2f} pp from a single seed (no interval): not resolved"
    interval = (f"{row['mean_difference']:+.2f} pp [95% CI {row['ci95_low']:+.2f}, {row['ci95_high']:+.2f}], "
                f"p = {row['p_paired_t']:.3f}, Holm-adjusted over the study's {family} primary comparison"
                f"{'s' if family > 1 else ''} p = {row['p_holm']:.3f} (paired t, n = {row['n']})")
    if row["resolved"]:
        return f"{interval}: resolved"
    return f"{interval}: not resolved ({power_phrase(row)})"


def _sides(row: pd.Series) -> str:
    """Each side's mean over the paired seeds."""
    if row["factor"] == "model":
        return f"{row['level']} {row['level_mean']:.2f}%, {row['baseline']} {row['baseline_mean']:.2f}%; "
    return (f"{row['factor']}={row['level']} {row['level_mean']:.2f}%, {row['factor']}={row['baseline']} "
            f"{row['baseline_mean']:.2f}%; ")


def primary_findings(trials: StudyTrials, effects: pd.DataFrame, unanswered: list[Unanswered]) -> list[str]:
    """One sentence per primary row, in the order the spec declares them, then one per declared
    comparison no row answers (each counted in the Holm family as p = 1)."""
    rows = effects[effects["primary"].astype(bool)].sort_values("primary_order")
    family = int(effects["family_size"].iloc[0]) if len(effects) else len(unanswered)
    out = []
    for _, row in rows.iterrows():
        at = f" at {100 * row['at_level']:g}% validation accuracy" if pd.notna(row.get("at_level")) else ""
        within = f" ({row['within']})" if row["within"] and not str(row["within"]).startswith("averaged") else ""
        seeds = trials.frame["seed"].nunique()
        partial = (f" Only {row['n']} of {seeds} seeds' curves reached the level on both sides: the comparison "
                   "holds for the seeds that got there." if at and row["n"] < seeds else "")
        out.append(f"{row['comparison']}{within}{at}, {row['metric']}: {_sides(row)}difference "
                   f"{verdict(row, family)}.{partial}")
    for missing in unanswered:
        at = f" at {100 * missing.at_level:g}% validation accuracy" if missing.at_level is not None else ""
        out.append(f"{missing.primary.label}{at}, {missing.metric}: declared primary, not answered in the "
                   f"`{trials.options.profile}` profile ({missing.reason}); counted as p = 1 among the "
                   f"{family} primary comparisons.")
    return out


CLOSING = ("The `standard` profile (full MNIST, tens of epochs, on one GPU) and the `paper` profile (the paper's "
           "schedule) add `cnn_paper`, train to the paper's accuracy range, and compare the robustness curves up to "
           "99.2% clean accuracy; their intervals resolve smaller differences.")
