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
    assert points[0].values == (("augmentation", "none"), ("routing_iters", 1))


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"colour": "red"}, "colour: unknown key"),
        ({"kind": "speed"}, "kind: value 'speed': input should be 'accuracy'"),
        ({"dataset": "cifar10"}, "dataset: value 'cifar10': input should be 'mnist' or 'fashion_mnist'"),
        ({"arms": [{"model": "vit"}]}, "model 'vit' unknown"),
        ({"arms": [{"model": "capsnet", "scientific": {"routing_iters": ["three"]}}]}, "routing_iters: input should be a valid integer, got 'three'"),
        ({"arms": [{"model": "capsnet", "scientific": {"routing_iters": [0]}}]}, "routing_iters: input should be greater than or equal to 1, got 0"),
        ({"arms": [{"model": "capsnet", "scientific": {"recon_weight": [-0.1]}}]}, "recon_weight: input should be greater than or equal to 0, got -0.1"),
        ({"arms": [{"model": "capsnet", "scientific": {"wings": [2]}}]}, "'wings' is neither"),
        ({"arms": [{"model": "capsnet", "scientific": {"augmentation": ["flip"]}}]}, "unknown augmentation"),
        ({"profiles": {"turbo": {"seeds": [0]}}}, "profiles.turbo: key 'turbo': input should be 'smoke'"),
        ({"profiles": {"smoke": {"seeds": []}}}, "profiles.smoke.seeds: value []: list should have at least 1 item"),
        ({"profiles": {"smoke": {"seeds": [0], "epochs": 0}}}, "profiles.smoke: epochs: input should be greater than or equal to 1, got 0"),
        ({"profiles": {"smoke": {"seeds": [0], "budget": 3}}}, "profiles.smoke: unknown key 'budget'"),
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
    capsnet = {p.config_key for p in spec.points("paper") if p.model == "capsnet"}
    # routing x reconstruction at shift2, plus the paper's configuration without augmentation
    assert len(capsnet) == 3 * 2 + 1
    assert "capsnet|augmentation=none|recon_weight=0.0005|routing_iters=3" in capsnet
    assert {p.seed for p in spec.points("paper")} == {0, 1, 2}
    quick = spec.points("quick")
    assert {p.model for p in quick} == {"capsnet", "cnn_pool"} and {p.seed for p in quick} == {0, 1, 2}
    # CapsNet: routing {1, 3} x reconstruction; the pooled CNN; all at shift2
    assert len(quick) == (2 * 2 + 1) * 3
    assert {p.values for p in quick if p.model == "cnn_pool"} == {(("augmentation", "shift2"),)}
    assert set(spec.profiles) == {"smoke", "quick", "standard", "paper"}
    assert load_spec("ablation", dataset="fashion_mnist").dataset == "fashion_mnist"


def test_two_arms_reaching_one_configuration_give_one_point():
    data = base(arms=[
        {"model": "capsnet", "scientific": {"routing_iters": [1, 3]}},
        {"model": "capsnet", "scientific": {"augmentation": ["none", "shift2"]}},
    ])
    data["fixed"] = {"augmentation": "shift2"}
    points = parse_spec(data, "t.toml").points("smoke")
    keys = [p.config_key for p in points]
    # arm 2's shift2 point is arm 1's routing 3 point: trained once
    assert len(keys) == 3 * 2 and len(set(keys)) == 3
    assert set(keys) == {"capsnet|augmentation=shift2|routing_iters=1", "capsnet|augmentation=shift2|routing_iters=3",
                         "capsnet|augmentation=none|routing_iters=3"}


def test_arms_that_reach_one_configuration_must_agree_on_the_rest():
    data = base(arms=[
        {"model": "capsnet", "scientific": {"routing_iters": [1, 3]}},
        {"model": "capsnet", "scientific": {"augmentation": ["shift2"]}, "fixed": {"lr": 0.01}},
    ])
    data["fixed"] = {"augmentation": "shift2"}
    with pytest.raises(SpecError, match="like an earlier arm"):
        parse_spec(data, "t.toml")


def test_a_profile_sets_recipe_parameters_and_bf16_auto():
    data = base()
    data["profiles"]["smoke"].update(batch_size=16, lr=0.002, bf16="auto")
    spec = parse_spec(data, "t.toml")
    config = spec.train_config(spec.points("smoke")[0], "smoke", device="cpu")
    assert config.batch_size == 16 and config.lr == 0.002 and isinstance(config.bf16, bool)


def test_a_profile_may_give_one_model_its_own_recipe():
    data = base()
    data["arms"].append({"model": "cnn_pool", "scientific": {"augmentation": ["none"]}})
    data["profiles"]["smoke"]["per_model"] = {"cnn_pool": {"epochs": 2}}
    spec = parse_spec(data, "t.toml")
    epochs = {(p.model, spec.train_config(p, "smoke", device="cpu").epochs) for p in spec.points("smoke")}
    assert epochs == {("capsnet", 1), ("cnn_pool", 2)}
    data["profiles"]["smoke"]["per_model"] = {"cnn_paper": {"epochs": 2}}
    with pytest.raises(SpecError, match="per_model: 'cnn_paper' has no \\[\\[arms\\]\\] entry"):
        parse_spec(data, "t.toml")


def test_a_profile_may_restrict_one_models_grid():
    data = base()
    data["arms"].append({"model": "cnn_pool", "scientific": {"augmentation": ["none", "shift2"]}})
    data["arms"][0]["scientific"]["augmentation"] = ["none", "shift2"]
    data["profiles"]["smoke"]["model_grid"] = {"cnn_pool": {"augmentation": ["shift2"]}}
    points = parse_spec(data, "t.toml").points("smoke")
    configs = {p.config_key for p in points}
    assert configs == {"capsnet|augmentation=none|routing_iters=1", "capsnet|augmentation=none|routing_iters=3",
                       "capsnet|augmentation=shift2|routing_iters=1", "capsnet|augmentation=shift2|routing_iters=3",
                       "cnn_pool|augmentation=shift2"}
    for model_grid, fragment in [
        ({"cnn_paper": {"augmentation": ["none"]}}, "model_grid: 'cnn_paper' has no [[arms]] entry"),
        ({"cnn_pool": {"routing_iters": [1]}}, "model_grid.cnn_pool: 'routing_iters' is not a scientific parameter"),
        ({"cnn_pool": {"augmentation": ["flip"]}}, "unknown augmentation"),
    ]:
        data["profiles"]["smoke"]["model_grid"] = model_grid
        with pytest.raises(SpecError) as error:
            parse_spec(data, "t.toml")
        assert fragment in str(error.value)


def test_a_profile_cannot_fix_a_scientific_parameter():
    data = base()
    data["profiles"]["smoke"]["routing_iters"] = 3
    with pytest.raises(SpecError, match="scientific parameter; restrict its values with grid"):
        parse_spec(data, "t.toml")


def test_a_study_refuses_a_dataset_it_does_not_support():
    with pytest.raises(SpecError, match="runs on mnist only, not 'fashion_mnist'"):
        load_spec("affnist", dataset="fashion_mnist")


def test_unknown_study_lists_the_builtin_ones():
    with pytest.raises(SpecError, match="ablation"):
        load_spec("nonexistent")


def test_primary_comparisons_are_declared_and_checked():
    data = base(primary=[{"model": "capsnet", "compare": {"routing_iters": [1, 3]}, "metrics": ["test_error"]}])
    (primary,) = parse_spec(data, "t.toml").primary
    assert (primary.factor, primary.baseline, primary.level, primary.label) == (
        "routing_iters", 1, 3, "capsnet: routing_iters 3 − 1")
    for entry, fragment in [
        ({"compare": {"routing_iters": [1, 3]}, "metrics": ["test_error"]}, "say which model's parameter"),
        ({"model": "capsnet", "compare": {"routing_iters": [1, 2]}, "metrics": ["test_error"]},
         "routing_iters = 2 is not among the values"),
        ({"model": "capsnet", "compare": {"routing_iters": [1, 3]}, "metrics": ["rotation_auc"]},
         "primary[0].metrics: 'rotation_auc' is not measured by a 'accuracy' study"),
        ({"compare": {"model": ["cnn_pool", "capsnet"]}, "metrics": ["test_error"]},
         "primary[0].compare: model 'cnn_pool' has no [[arms]] entry"),
        ({"model": "capsnet", "compare": {"routing_iters": [1, 3], "recon_weight": [0, 1]}, "metrics": ["test_error"]},
         "compare names exactly one parameter"),
        ({"model": "capsnet", "compare": {"routing_iters": [1, 3]}, "within": {"augmentation": "flip"},
          "metrics": ["test_error"]}, "primary[0].within"),
        ({"model": "capsnet", "compare": {"routing_iters": [1, 3]}, "within": {"routing_iters": 1},
          "metrics": ["test_error"]}, "'routing_iters' is not another scientific parameter"),
    ]:
        with pytest.raises(SpecError) as error:
            parse_spec(base(primary=[entry]), "bad.toml")
        assert fragment in str(error.value), str(error.value)


def test_reported_profiles_test_on_the_whole_test_set_or_a_large_subset():
    data = base()
    data["profiles"]["quick"] = {"seeds": [0], "test_size": 5000}
    with pytest.raises(SpecError, match="profiles.quick: test_size 5000: a 'accuracy' study is tested on the whole"):
        parse_spec(data, "bad.toml")
    rotation = {"name": "r", "kind": "rotation", "arms": [{"model": "cnn_pool"}], "settings": {"levels": [0.5]},
                "profiles": {"quick": {"seeds": [0], "val_size": 10, "test_size": 500}}}
    with pytest.raises(SpecError, match="test_size 500: a test subset has at least 1000 images"):
        parse_spec(rotation, "bad.toml")
    rotation["profiles"]["quick"]["test_size"] = 1000
    parse_spec(rotation, "good.toml")
    # smoke is the tests' own profile, never reported beside published numbers
    rotation["profiles"]["smoke"] = {"seeds": [0], "val_size": 10, "test_size": 50}
    parse_spec(rotation, "good.toml")


def test_the_builtin_quick_profiles_give_every_arm_one_budget():
    for name in ("ablation", "affnist", "rotation"):
        spec = load_spec(name)
        budgets = {(c.train_size, c.epochs, c.batch_size) for c in
                   (spec.train_config(p, "quick", device="cpu") for p in spec.points("quick"))}
        assert len(budgets) == 1, (name, budgets)
        assert spec.primary, name
    ablation = load_spec("ablation")
    assert {ablation.train_config(p, "quick", device="cpu").test_size for p in ablation.points("quick")} == {None}


def test_a_primary_comparison_must_have_exactly_one_answer():
    arms = [{"model": "capsnet", "scientific": {"routing_iters": [1, 3], "recon_weight": [0.0, 0.0005],
                                                "augmentation": ["none", "shift2"]}},
            {"model": "cnn_pool", "scientific": {"augmentation": ["none", "shift2"]}}]
    good = [
        {"compare": {"model": ["cnn_pool", "capsnet"]}, "within": {"augmentation": "shift2"}, "metrics": ["test_error"]},
        {"model": "capsnet", "compare": {"routing_iters": [1, 3]}, "metrics": ["test_error"]},  # main effect
        {"model": "capsnet", "compare": {"routing_iters": [1, 3]}, "within": {"recon_weight": 0.0005,
                                                                              "augmentation": "none"},
         "metrics": ["test_error"]},
    ]
    assert len(parse_spec(base(arms=arms, primary=good), "t.toml").primary) == 3
    for entry, fragment in [
        # the CNN's two augmentations are two rows unless `within` picks one
        ({"compare": {"model": ["cnn_pool", "capsnet"]}, "metrics": ["test_error"]}, "also name augmentation"),
        # a stratum named in part leaves several rows
        ({"model": "capsnet", "compare": {"routing_iters": [1, 3]}, "within": {"augmentation": "none"},
          "metrics": ["test_error"]}, "also name recon_weight"),
        # the capsule model comes second, at its defaults
        ({"compare": {"model": ["capsnet", "cnn_pool"]}, "within": {"augmentation": "none"},
          "metrics": ["test_error"]}, "sets a capsule model"),
        # CapsNet's own options are held at its defaults in a comparison of models
        ({"compare": {"model": ["cnn_pool", "capsnet"]}, "within": {"augmentation": "none", "routing_iters": 1},
          "metrics": ["test_error"]}, "'routing_iters' is not a scientific parameter of both"),
    ]:
        with pytest.raises(SpecError) as error:
            parse_spec(base(arms=arms, primary=[entry]), "bad.toml")
        assert fragment in str(error.value), str(error.value)


def test_a_fixed_test_size_cannot_slip_past_the_whole_test_set_rule():
    data = base(fixed={"test_size": 2000})
    data["profiles"]["quick"] = {"seeds": [0]}
    with pytest.raises(SpecError, match="a 'accuracy' study is tested on the whole test set"):
        parse_spec(data, "bad.toml")


def test_curve_studies_compare_on_a_validation_split_and_each_primary_once():
    rotation = {"name": "r", "kind": "rotation", "settings": {"levels": [0.5]},
                "arms": [{"model": "capsnet", "scientific": {"augmentation": ["none", "shift2"]}},
                         {"model": "cnn_pool", "scientific": {"augmentation": ["none", "shift2"]}}],
                "profiles": {"quick": {"seeds": [0], "val_size": 1000}}}
    models_compared = {"compare": {"model": ["cnn_pool", "capsnet"]}, "within": {"augmentation": "none"},
                       "metrics": ["rotation_auc"]}
    assert len(parse_spec({**rotation, "primary": [models_compared]}, "good.toml").primary) == 1
    # a parameter within one model is compared along the curves too (a routing procedure, say)
    within_capsnet = {"model": "capsnet", "compare": {"augmentation": ["none", "shift2"]}, "metrics": ["rotation_auc"]}
    assert parse_spec({**rotation, "primary": [within_capsnet]}, "good.toml").primary[0].factor == "augmentation"
    # one comparison declared twice would count its answer twice in Holm's family
    with pytest.raises(SpecError, match=r"primary\[1\]: repeats primary\[0\] for 'rotation_auc'"):
        parse_spec({**rotation, "primary": [models_compared, {**models_compared, "metrics": ["test_accuracy",
                                                                                            "rotation_auc"]}]},
                   "bad.toml")
    # the curves are read on a validation split, checked before anything trains
    no_validation = {**rotation, "profiles": {"quick": {"seeds": [0], "val_size": 0}}}
    with pytest.raises(SpecError, match="profiles.quick: a 'rotation' study reads its curves on a validation split"):
        parse_spec(no_validation, "bad.toml")
