"""Paired effects with declared primary comparisons (studies/report/effects.py): which rows are
primary, Holm's adjustment over them, and comparisons at unequal budgets."""
import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.multitest import multipletests

from studies.report import effects as fx
from studies.spec.study import parse_spec

SPEC = parse_spec({
    "name": "t", "kind": "accuracy",
    "arms": [{"model": "capsnet", "scientific": {"routing_iters": [1, 3], "recon_weight": [0.0, 0.0005]}},
             {"model": "cnn_pool"}],
    "primary": [{"model": "capsnet", "compare": {"routing_iters": [1, 3]}, "metrics": ["test_error"]},
                {"compare": {"model": ["cnn_pool", "capsnet"]}, "metrics": ["test_error"]},
                {"model": "capsnet", "compare": {"recon_weight": [0.0, 0.0005]}, "metrics": ["test_error"]}],
    "profiles": {"smoke": {"seeds": [0, 1, 2], "train_size": 8}},
}, "t.toml")
METRIC = fx.Metric("test_error", "test error %", lower_is_better=True)
# Test error per configuration and seed: routing 3 lowers it by about 0.4 points in every seed,
# reconstruction moves it by a few hundredths either way, and the pooled CNN sits about 1 point
# above CapsNet.
ERRORS = {
    ("capsnet", 1, 0.0): [0.030, 0.031, 0.029], ("capsnet", 1, 0.0005): [0.0296, 0.0316, 0.0284],
    ("capsnet", 3, 0.0): [0.026, 0.027, 0.0252], ("capsnet", 3, 0.0005): [0.0262, 0.0273, 0.0248],
    ("cnn_pool", None, None): [0.036, 0.0355, 0.0362],
}


def frame(images=None):
    rows = []
    for (model, routing, recon), errors in ERRORS.items():
        for seed, error in enumerate(errors):
            seen = (images or {}).get(model, 8)
            rows.append({"model": model, "routing_iters": routing, "recon_weight": recon, "seed": seed,
                         "test_error": error, "images_seen": seen, "batch_size": 4,
                         "params": 8_215_568 if model == "capsnet" else 4_587_282})
    return pd.DataFrame(rows)


def effects(data):
    scientific = ["routing_iters", "recon_weight"]
    rows = fx.factor_effects(data, SPEC, scientific, METRIC) + fx.model_effects(data, scientific, METRIC)
    return fx.mark_primary(rows, SPEC)


def test_the_declared_comparisons_are_primary_and_holm_adjusted_over_them():
    table, missing = effects(frame())
    assert not missing
    primary = table[table["primary"]].sort_values("primary_order")
    # The main effects (averaged over the other factor), and CapsNet at its defaults minus the CNN.
    assert list(primary["comparison"]) == [
        "capsnet: routing_iters 3 − 1", "capsnet (routing_iters=3, recon_weight=0.0005; 8.2M parameters) − cnn_pool "
        "(4.6M parameters)", "capsnet: recon_weight 0.0005 − 0.0"]
    assert primary["within"].iloc[0].startswith("averaged over")
    assert primary["p_holm"].to_numpy() == pytest.approx(multipletests(primary["p_paired_t"], method="holm")[1])
    exploratory = table[~table["primary"]]
    assert len(exploratory) == 4 and exploratory["p_holm"].isna().all()  # the strata of both factors
    # Routing's 0.4 points with a small sd survive Holm over three; reconstruction's 0.05 do not.
    routing, versus, reconstruction = (primary.iloc[i] for i in range(3))
    assert routing["mean_difference"] == pytest.approx(-0.4, abs=0.05)
    assert routing["p_holm"] < 0.05 and routing["resolved"]
    assert reconstruction["p_holm"] > 0.05 and not reconstruction["resolved"]
    assert versus["mean_difference"] == pytest.approx(-0.95, abs=0.1) and versus["resolved"]
    assert set(table["family_size"]) == {3}


def test_a_comparison_at_unequal_budgets_says_so_and_is_never_resolved():
    table, _ = effects(frame(images={"cnn_pool": 16}))
    versus = table[table["comparison"].str.contains("cnn_pool")]
    assert list(versus["budget"]) == ["unequal budgets"] and not versus["resolved"].any()
    assert set(table[~table["comparison"].str.contains("cnn_pool")]["budget"]) == {"equal"}


def test_a_declared_comparison_without_data_stays_in_the_family_as_p_one():
    data = frame()
    table, unanswered = effects(data[data["model"] == "capsnet"])
    assert [u.primary.factor for u in unanswered] == ["model"] and "no data" in unanswered[0].reason
    primary = table[table["primary"]].sort_values("primary_order")
    assert len(primary) == 2 and set(table["family_size"]) == {3}
    # Holm over three p-values, the missing one counted as 1: not over the two present.
    expected = multipletests(list(primary["p_paired_t"]) + [1.0], method="holm")[1][:2]
    assert primary["p_holm"].to_numpy() == pytest.approx(expected)


def test_nothing_is_resolved_with_fewer_than_three_seeds():
    data = frame()
    table, _ = effects(data[data["seed"] < 2])
    assert set(table["n"]) == {2} and not table["resolved"].any()
    assert np.isfinite(table["ci95_low"]).all()


def test_a_finding_at_a_level_says_when_some_seeds_never_reached_it():
    from types import SimpleNamespace

    from studies.report.findings import primary_findings

    table, _ = effects(frame())  # n = 3 in every row
    table["at_level"] = 0.9
    all_reached = primary_findings(SimpleNamespace(frame=pd.DataFrame({"seed": [0, 1, 2]})), table, [])
    assert len(all_reached) == 3 and not any("seeds' curves reached" in f for f in all_reached)
    one_short = primary_findings(SimpleNamespace(frame=pd.DataFrame({"seed": [0, 1, 2, 3]})), table, [])
    assert all("at 90% validation accuracy" in f and "Only 3 of 4 seeds' curves reached the level" in f
               for f in one_short)
