"""The findings at the top of REPORT.md: a few sentences, each a result with its number, its 95%
interval and its budget, written from the same effects tables the sections show."""
from __future__ import annotations

import pandas as pd

from studies.report import stats
from studies.report.trials import StudyTrials


def budget_phrase(trials: StudyTrials) -> str:
    frame = trials.frame
    images = ", ".join(str(int(v)) for v in sorted(frame["train_images"].unique()))
    epochs = ", ".join(str(int(v)) for v in sorted(frame["epochs"].unique()))
    dtype = ", ".join(sorted(frame["dtype"].unique()))
    return (f"{images} training images, {epochs} epoch(s), batch "
            f"{', '.join(str(int(v)) for v in sorted(frame['batch_size'].unique()))}, "
            f"{frame['seed'].nunique()} seeds, {dtype}, profile `{trials.options.profile}`")


def pick(effects: pd.DataFrame, metric: str, comparison_start: str) -> pd.Series | None:
    """The comparison's main effect (averaged over the other factors) or else its first row."""
    rows = effects[(effects["metric"] == metric) & effects["comparison"].str.startswith(comparison_start)]
    if rows.empty:
        return None
    averaged = rows[rows["within"].str.startswith("averaged")]
    return (averaged if len(averaged) else rows).iloc[0]


def verdict(row: pd.Series) -> str:
    if row["n"] < 2:
        return f"{row['mean_difference']:+.2f} pp from a single seed (no interval)"
    interval = f"{row['mean_difference']:+.2f} pp [95% CI {row['ci95_low']:+.2f}, {row['ci95_high']:+.2f}], " \
               f"p = {row['p_paired_t']:.3f} (paired t, n = {row['n']})"
    if row["resolved"]:
        return f"{interval}: resolved"
    needed = row["seeds_for_80pct_power"]
    more = (f"about {int(needed)} seeds would resolve a difference of this size" if needed is not None
            and not pd.isna(needed) else "no practical number of seeds would resolve a difference this small")
    return f"{interval}: not resolved at this budget ({more})"


def _matching(table: pd.DataFrame, **values) -> pd.Series:
    mask = pd.Series(True, index=table.index)
    for column, value in values.items():
        if column not in table:
            return pd.Series(False, index=table.index)
        mask &= table[column] == value
    return mask


def _summary_text(table: pd.DataFrame, mask) -> str | None:
    rows = table[mask]
    if rows.empty:
        return None
    row = rows.iloc[0]
    if pd.isna(row["ci95_low"]):
        return f"{row['test_error_mean']:.2f}% (n = {row['n']})"
    return f"{row['test_error_mean']:.2f}% [{row['ci95_low']:.2f}, {row['ci95_high']:.2f}]"


def accuracy_findings(trials: StudyTrials, table: pd.DataFrame, effects: pd.DataFrame) -> list[str]:
    out = []
    budget = budget_phrase(trials)
    metric = "test error %"
    for _, row in effects[(effects["metric"] == metric) & effects["comparison"].str.startswith("capsnet (")
                          & (effects["within"] == "augmentation=shift2")].iterrows():
        other = row["comparison"].rsplit("− ", 1)[1]
        ours = _summary_text(table, _matching(table, model="capsnet", routing_iters=3, recon_weight=0.0005,
                                              augmentation="shift2"))
        theirs = _summary_text(table, _matching(table, model=other, augmentation="shift2"))
        out.append(f"On {trials.spec.dataset} ({budget}), CapsNet at the paper's configuration (routing 3, "
                   f"reconstruction) has {ours} test error and `{other}` {theirs}; CapsNet minus `{other}`: "
                   f"{verdict(row)}.")
    for factor, words in (("routing_iters 3 − 1", "Three routing iterations instead of one"),
                          ("recon_weight 0.0005 − 0.0", "The reconstruction loss (weight 0.0005)")):
        row = pick(effects, metric, f"capsnet: {factor}")
        if row is not None:
            out.append(f"{words} changes CapsNet's test error by {verdict(row)}.")
    return out


def affnist_findings(trials: StudyTrials, matched: pd.DataFrame, effects: pd.DataFrame, set_names) -> list[str]:
    name = " / ".join(set_names)
    row = pick(effects, f"{name} accuracy %", "capsnet")
    if row is None:
        return []
    target = 100 * matched["target_accuracy"].iloc[0]
    accuracies = {m: stats.summarize(100 * g["affnist_accuracy"]) for m, g in matched.groupby("model")}
    said = ", ".join(f"{m} {s.mean:.1f}%" for m, s in accuracies.items())
    return [f"At matched clean accuracy ({target:.0f}% on a validation split of expanded MNIST; "
            f"{budget_phrase(trials)}), accuracy on the {name} set is {said}; CapsNet minus CNN: {verdict(row)}."]


def rotation_findings(trials: StudyTrials, matched: pd.DataFrame, effects: pd.DataFrame) -> list[str]:
    row = pick(effects, "rotation AUC %", "capsnet")
    if row is None:
        return []
    target = matched["target_accuracy"].iloc[0] if "target_accuracy" in matched else None
    at = (f"at matched clean accuracy ({100 * target:.0f}% on a validation split; " if target
          else "at their final accuracy (")
    within = f", {row['within']}" if row["within"] else ""
    return [f"Trained on upright digits and compared {at}{budget_phrase(trials)}{within}), CapsNet's mean "
            f"accuracy over the rotation sweep minus the CNN's: {verdict(row)}."]


CLOSING = ("The `standard` profile (full MNIST, tens of epochs, on one GPU) and the `paper` profile (the paper's "
           "schedule) add `cnn_paper`, train to the paper's accuracy range, and match the robustness comparisons "
           "at 99% clean accuracy; their intervals resolve smaller differences.")
