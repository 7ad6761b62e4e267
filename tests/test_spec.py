"""Spec validation: every mistake is an error that names the file and the key."""
import pytest

from studies.spec.study import SpecError, builtin_names, load_spec, parse_spec


def base(**overrides):
    data = {
        "name": "t",
        "arms": [{"model": "capsnet", "scientific": {"routing_iters": [1, 3], "augmentation": ["none"]}}],
        "profiles": {"smoke": {"seeds": [0, 1], "train_size": 8, "epochs": 1}},
    }
    data.update(overrides)
    return data


def test_a_valid_spec_enumerates_grid_times_seeds():
    spec = parse_spec(base(), "t.toml")
    points = spec.points("smoke")
    assert len(points) == 2 * 2
    assert len({p.key for p in points}) == 4
    config = spec.train_config(points[0], "smoke")
    assert config.model_options == {"routing_iters": 1} and config.train_size == 8


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"colour": "red"}, "unknown key(s) colour"),
        ({"kind": "speed"}, "kind 'speed' unknown"),
        ({"dataset": "cifar10"}, "dataset 'cifar10' unknown"),
        ({"arms": [{"model": "vit"}]}, "model 'vit' unknown"),
        ({"arms": [{"model": "capsnet", "scientific": {"routing_iters": ["three"]}}]}, "routing_iters = 'three' should be of type int"),
        ({"arms": [{"model": "capsnet", "scientific": {"routing_iters": [0]}}]}, "routing_iters must be >= 1"),
        ({"arms": [{"model": "capsnet", "scientific": {"recon_weight": [-0.1]}}]}, "recon_weight must be >= 0"),
        ({"arms": [{"model": "capsnet", "scientific": {"wings": [2]}}]}, "'wings' is neither"),
        ({"arms": [{"model": "capsnet", "scientific": {"augmentation": ["flip"]}}]}, "unknown augmentation"),
        ({"profiles": {"turbo": {"seeds": [0]}}}, "unknown profile 'turbo'"),
        ({"profiles": {"smoke": {"seeds": []}}}, "seeds must be a non-empty list"),
        ({"profiles": {"smoke": {"seeds": [0], "epochs": 0}}}, "epochs must be >= 1"),
        ({"profiles": {"smoke": {"seeds": [0], "budget": 3}}}, "unknown key(s) budget"),
        ({"nuisance": {"lr": {"low": 1.0, "high": 0.1}}}, "low must be below high"),
        ({"nuisance": {"lr": {"low": 1e-4, "high": 1e-2}}, "profiles": {"smoke": {"seeds": [0], "nuisance_trials": 2}}},
         "needs val_size > 0"),
    ],
)
def test_invalid_specs_name_the_problem(overrides, fragment):
    with pytest.raises(SpecError) as error:
        parse_spec(base(**overrides), "bad.toml")
    assert "bad.toml" in str(error.value) and fragment in str(error.value)


def test_builtin_ablation_is_the_paper_grid_and_more():
    spec = load_spec("ablation")
    assert "ablation" in builtin_names()
    capsnet = [p for p in spec.points("paper") if p.model == "capsnet"]
    assert len({p.config_key for p in capsnet}) == 3 * 2 * 2  # routing x reconstruction x augmentation
    assert {p.seed for p in spec.points("paper")} == {0, 1, 2}
    assert {p.model for p in spec.points("quick")} == {"capsnet", "cnn_paper", "cnn_pool"}
    assert set(spec.profiles) == {"smoke", "quick", "standard", "paper"}
    assert load_spec("ablation", dataset="fashion_mnist").dataset == "fashion_mnist"


def test_unknown_study_lists_the_builtin_ones():
    with pytest.raises(SpecError, match="ablation"):
        load_spec("nonexistent")
