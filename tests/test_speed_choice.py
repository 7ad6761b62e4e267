"""The CPU speed plan: the rule that picks a path, the plan in force in the model, where a model's
paths are, the cache, and a resumed run keeping the plan it started with."""
from __future__ import annotations

import pytest
import torch

import models
from models import speed_paths
from models.speed_paths import MIN_FACTOR, SpeedPlan
from studies.training import speed_choice
from studies.training.config import TrainConfig
from studies.training.loop import Split, train

SMALL_CAPSNET = {"conv1_channels": 16, "primary_types": 4, "primary_dim": 8, "digit_dim": 4}


def small_capsnet(**options) -> torch.nn.Module:
    torch.manual_seed(0)
    return models.create("capsnet", **SMALL_CAPSNET, **options)


def test_a_path_runs_only_from_the_minimum_factor_and_the_fastest_paying_one_wins():
    assert speed_choice.pick({"kernels": MIN_FACTOR - 0.01}, "autograd") == "autograd"
    assert speed_choice.pick({"kernels": MIN_FACTOR}, "autograd") == "kernels"
    assert speed_choice.pick({"kernels": 1.4, "sweeps": 1.9}, "autograd") == "sweeps"
    assert speed_choice.pick({}, "direct") == "direct"


def test_a_factor_is_the_median_of_per_round_ratios():
    # rounds: plain/fast = 2/1, 4/4, 6/2 -> 2, 1, 3 -> median 2 (a ratio of medians would say 4/2 = 2 too,
    # so the second case tells them apart: 1/1, 1/2, 9/3 -> 1, 0.5, 3 -> median 1; medians 1/2 = 0.5)
    assert speed_choice.paired_factors({"plain": [2, 4, 6], "fast": [1, 4, 2]}, "plain") == {"fast": 2.0}
    assert speed_choice.paired_factors({"plain": [1, 1, 9], "fast": [1, 2, 3]}, "plain") == {"fast": 1.0}


def test_interleaving_rotates_the_order_and_times_the_second_of_two_calls():
    calls = []
    times = speed_choice.interleave({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=2)
    assert calls == ["a", "a", "b", "b", "b", "b", "a", "a"]
    assert [len(t) for t in times.values()] == [2, 2]


def test_the_measurement_stops_early_only_where_every_factor_is_clear_of_the_threshold():
    settled = speed_choice.clear_of_the_threshold("plain")
    assert settled({"plain": [3, 3, 3], "fast": [1, 1, 1]})  # 3x
    assert settled({"plain": [1, 1, 1], "fast": [1, 1, 1]})  # 1x
    assert not settled({"plain": [1.3, 1.3, 1.3], "fast": [1, 1, 1]})  # at the threshold: all rounds
    assert not settled({"plain": [3, 3, 3], "fast": [1, 1, 1], "other": [2.4, 2.4, 2.4]})  # 1.25x: near it
    steps = {"plain": lambda: None, "fast": lambda: None}
    assert len(speed_choice.interleave(steps, 9, lambda times: True)["plain"]) == 3  # the minimum
    assert len(speed_choice.interleave(steps, 9, lambda times: False)["plain"]) == 9


def test_a_plan_rejects_unknown_paths():
    with pytest.raises(ValueError, match="routing must be one of kernels, sweeps, autograd"):
        SpeedPlan(routing="fast")


def test_the_plan_in_force_decides_the_routing_and_the_convolution(monkeypatch):
    """Under a plan of plain twins the model runs `route_with_autograd` and nn.Conv2d; under the
    hand-written paths, neither; the scores agree either way."""
    import models.capsnet as capsnet
    import models.routing as routing

    plain_routes, dft_convs = [], []
    original_route, original_dft = routing.route_with_autograd, capsnet.stride2_conv_dft
    monkeypatch.setattr(routing, "route_with_autograd",
                        lambda *a, **k: plain_routes.append(1) or original_route(*a, **k))
    monkeypatch.setattr(capsnet, "stride2_conv_dft", lambda *a: dft_convs.append(1) or original_dft(*a))
    model = small_capsnet()
    images, labels = torch.rand(4, 1, 28, 28), torch.arange(4)

    def scores(plan):
        with speed_paths.using(plan):
            return model(images, labels).scores

    plain = scores(SpeedPlan("autograd", "direct"))
    assert plain_routes == [1] and dft_convs == []
    fast = scores(SpeedPlan("sweeps", "dft"))
    assert plain_routes == [1] and dft_convs == [1]
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # a forward alone never takes the DFT: its gain is all in the backward
        scores(SpeedPlan("sweeps", "dft"))
    assert dft_convs == [1]
    assert speed_paths.current() is None


def test_the_sites_are_found_without_arithmetic_and_a_cnn_has_none():
    model = small_capsnet()
    where = speed_choice.situation(model, (8, 1, 28, 28), bf16=False)
    conv_layer, conv_shape = where.sites.conv
    routing_layer, routing_shape = where.sites.routing
    assert conv_layer is model.primary and tuple(conv_shape) == (8, 16, 20, 20)
    assert routing_layer is model.digits and tuple(routing_shape) == (8, 4 * 6 * 6, 8)
    assert "float32" in where.key and "PrimaryCaps 8x16x20x20" in where.key and "routing 8x144x8" in where.key
    assert speed_choice.situation(models.create("cnn_pool"), (8, 1, 28, 28), bf16=False) is None
    assert speed_choice.situation(small_capsnet(primary_conv="direct", routing_iters=1), (8, 1, 28, 28),
                                  bf16=False).sites.conv is None


def test_a_choice_is_measured_once_per_site_and_then_reused(tmp_path, monkeypatch):
    monkeypatch.setenv(speed_choice.CACHE_ENV, str(tmp_path))
    measured = []

    def fake_measure(kind, site, bf16, rounds=speed_choice.ROUNDS):
        measured.append((kind, tuple(site[1])))
        if kind == "routing":
            return "kernels", {"routing kernels": 2.0}, 3
        return "direct", {"PrimaryCaps dft": 1.1}, 5

    monkeypatch.setattr(speed_choice, "measure_site", fake_measure)
    model = small_capsnet()
    first = speed_choice.plan_for(model, (8, 1, 28, 28), bf16=False)
    again = speed_choice.plan_for(model, (8, 1, 28, 28), bf16=False)
    assert len(measured) == 2 and not first.reused and again.reused
    assert again.plan == first.plan == SpeedPlan("kernels", "direct")
    assert "routing kernels 2.00x" in again.why and "PrimaryCaps dft 1.10x" in again.why and "reused" in again.why
    # Another routing of the same network: its convolution is the same site, measured once.
    speed_choice.plan_for(small_capsnet(routing_iters=1), (8, 1, 28, 28), bf16=False)
    assert len(measured) == 3 and measured[-1][0] == "routing"
    speed_choice.plan_for(model, (16, 1, 28, 28), bf16=False)  # another batch: both again
    assert len(measured) == 5
    speed_choice.plan_for(model, (8, 1, 28, 28), bf16=False, reuse=False)
    assert len(measured) == 7
    (tmp_path / speed_choice.CACHE_FILE).write_text("{torn")
    assert not speed_choice.plan_for(model, (8, 1, 28, 28), bf16=False).reused  # a damaged cache is measured again


def test_a_real_measurement_gives_a_factor_per_candidate(tmp_path, monkeypatch):
    monkeypatch.setenv(speed_choice.CACHE_ENV, str(tmp_path))
    choice = speed_choice.plan_for(small_capsnet(), (4, 1, 28, 28), bf16=False)
    names = set(choice.factors)
    assert {"PrimaryCaps dft"} < names and len(names) == 2  # and the kernels or, without them, the sweeps
    assert all(factor > 0 for factor in choice.factors.values())
    assert choice.plan.primary_conv == ("dft" if choice.factors["PrimaryCaps dft"] >= MIN_FACTOR else "direct")


def synthetic_splits(size=16):
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 255, (size, 1, 28, 28), dtype=torch.uint8, generator=generator)
    labels = torch.arange(size) % 10
    return Split(images, labels), None, Split(images[:8], labels[:8])


def test_a_resumed_run_keeps_the_plan_it_started_with(tmp_path):
    config = TrainConfig(model="capsnet", model_options=SMALL_CAPSNET, epochs=2, batch_size=8, device="cpu",
                         progress=False)
    checkpoint = tmp_path / "run.pt"
    asked, in_force = [], []

    def source(plan):
        def choose(model, images, bf16):
            asked.append((plan, images))
            return plan
        return choose

    def crash_in_epoch_2(record, model):
        in_force.append(speed_paths.current())
        if record["epoch"] == 2:
            raise RuntimeError("simulated crash")

    started = SpeedPlan("autograd", "direct")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(config, crash_in_epoch_2, checkpoint=checkpoint, splits=synthetic_splits(), speed_plan=source(started))
    assert asked == [(started, (8, 1, 28, 28))] and in_force == [started, started]
    resumed = train(config, lambda record, model: in_force.append(speed_paths.current()), checkpoint=checkpoint,
                    splits=synthetic_splits(), speed_plan=source(SpeedPlan("sweeps", "dft")))
    assert len(asked) == 1  # not asked again: the checkpoint says which plan the run started with
    assert in_force[-1] == started and resumed.speed_plan == started.describe()
    assert speed_paths.current() is None


def test_a_sweeps_plan_keeps_the_kernels_off_forward_and_backward(monkeypatch, kernel):
    """At batch 16 the rule alone would take the C++ kernels; a plan of "sweeps" keeps the PyTorch
    sweeps in both directions (the backward reads the plan in force when it runs)."""
    import models.routing_sweeps as sweeps
    from models.routing import votes_and_route

    ran = []
    for name in ("_torch_forward_sweep", "_torch_backward_sweep"):
        original = getattr(sweeps, name)
        monkeypatch.setattr(sweeps, name, lambda *a, name=name, original=original: ran.append(name) or original(*a))
    generator = torch.Generator().manual_seed(0)
    u = (0.05 * torch.randn(16, 144, 8, generator=generator)).requires_grad_()
    weight = (0.01 * torch.randn(144, 10, 8, 4, generator=generator)).requires_grad_()
    for plan, expected in ((SpeedPlan(routing="kernels"), []),
                           (SpeedPlan(routing="sweeps"), ["_torch_forward_sweep"] * 2 + ["_torch_backward_sweep"] * 2)):
        ran.clear()
        with speed_paths.using(plan):
            votes_and_route(u, weight, 3).square().sum().backward()
        assert ran == expected, plan
