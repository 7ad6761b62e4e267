"""Every field of a spec, in every section, and every command-line option, fed values generated
from its own annotation (wrong type, not finite, out of range, not a known choice): each is refused
in one line that names the file and the key (or the option), before anything is stored."""
import copy
import dataclasses

import pytest

from bench import __main__ as bench_cli
from models.capsnet import CapsNetConfig
from models.cnn import PooledCNNConfig
from studies import cli
from studies.spec import schema
from studies.spec.study import TRAIN_KEYS, SpecError, parse_spec
from studies.training.config import TrainConfig
from tests.value_cases import bad_values, dataclass_annotation, field_annotation

BASE = {
    "name": "t",
    "kind": "accuracy",
    "arms": [{"model": "capsnet", "scientific": {"routing_iters": [1, 3]}},
             {"model": "cnn_pool", "scientific": {"augmentation": ["none"]}}],
    "nuisance": {"lr": {"low": 1e-4, "high": 1e-2}},
    "primary": [{"model": "capsnet", "compare": {"routing_iters": [1, 3]}, "metrics": ["test_error"]}],
    "profiles": {"smoke": {"seeds": [0], "train_size": 8, "val_size": 8, "epochs": 1}},
}
AFFNIST = {
    "name": "a", "kind": "affnist", "arms": [{"model": "capsnet", "fixed": {"input_size": 40}}],
    "fixed": {"canvas": 40},
    "settings": {"ranges": {"rotation_deg": 20.0}, "levels": [0.5, 0.6]},
    "profiles": {"smoke": {"seeds": [0], "train_size": 8, "val_size": 8, "settings": {"affnist_size": 10}}},
}
ROTATION = {
    "name": "r", "kind": "rotation", "arms": [{"model": "cnn_pool"}],
    "settings": {"angles": [0, 90], "levels": [0.5]},
    "profiles": {"smoke": {"seeds": [0], "train_size": 8, "val_size": 8, "settings": {"shifts": [0, 2]}}},
}


def placed(base, path, value):
    data = copy.deepcopy(base)
    target = data
    for key in path[:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = value
    return data


def cases():
    """(spec data, the key the message must name)."""
    for name in schema.SpecFile.model_fields:
        for value in bad_values(field_annotation(schema.SpecFile, name)):
            yield placed(BASE, [name], value), name
    for name in schema.ProfileTable.model_fields:
        for value in bad_values(field_annotation(schema.ProfileTable, name)):
            yield placed(BASE, ["profiles", "smoke", name], value), name
    for name in schema.ArmTable.model_fields:
        for value in bad_values(field_annotation(schema.ArmTable, name)) + (["vit"] if name == "model" else []):
            yield _arm(name, value), name
    for name in schema.NuisanceTable.model_fields:
        for value in bad_values(field_annotation(schema.NuisanceTable, name)):
            yield placed(BASE, ["nuisance", "lr", name], value), name
    for name in schema.PrimaryTable.model_fields:
        for value in bad_values(field_annotation(schema.PrimaryTable, name)) + PRIMARY_EXTRA.get(name, []):
            yield _primary(name, value), name
    for base, settings in ((AFFNIST, schema.AffnistSettings), (ROTATION, schema.RotationSettings)):
        for name in settings.model_fields:
            for value in bad_values(field_annotation(settings, name)):
                yield placed(base, ["settings", name], value), name
                yield placed(base, ["profiles", "smoke", "settings", name], value), name
    for name in schema.AffineRangesTable.model_fields:
        for value in bad_values(field_annotation(schema.AffineRangesTable, name)):
            yield placed(AFFNIST, ["settings", "ranges", name], value), name
    for name in TRAIN_KEYS:
        for value in bad_values(dataclass_annotation(TrainConfig, name)):
            yield placed(BASE, ["fixed", name], value), name
            if name not in ("augmentation",):  # a scientific parameter of arm 2; checked there
                yield placed(BASE, ["profiles", "smoke", name], value), name
            yield _scientific(name, value), name
            if name not in ("augmentation",):
                yield placed(BASE, ["profiles", "smoke", "per_model", "cnn_pool", name], value), name
    for model, config in (("capsnet", CapsNetConfig), ("cnn_pool", PooledCNNConfig)):
        for option in dataclasses.fields(config):
            for value in bad_values(dataclass_annotation(config, option.name)):
                yield _arm_fixed(model, option.name, value), option.name


# Values of the right type that name nothing the spec has.
PRIMARY_EXTRA = {"model": ["cnn_paper"], "compare": [{"routing_iters": [1, 1]}, {"routing_iters": [1, 7]},
                                                     {"model": ["cnn_pool", "vit"]}, {"recon": [0, 1]}],
                 "within": [{"augmentation": "rotate999"}], "metrics": [["affnist_accuracy"]]}


def _primary(name, value):
    data = copy.deepcopy(BASE)
    data["primary"][0][name] = value
    return data


def _arm(name, value):
    data = copy.deepcopy(BASE)
    data["arms"][0][name] = value
    return data


def _scientific(name, value):
    data = copy.deepcopy(BASE)
    data["arms"][1]["scientific"][name] = [value]
    return data


def _arm_fixed(model, name, value):
    data = copy.deepcopy(BASE)
    index = 0 if model == "capsnet" else 1
    data["arms"][index].setdefault("fixed", {})[name] = value
    return data


CASES = list(cases())


def test_the_generator_covers_every_field():
    keys = {key for _, key in CASES}
    expected = (set(schema.SpecFile.model_fields) | set(schema.ProfileTable.model_fields)
                | set(schema.ArmTable.model_fields) | set(schema.NuisanceTable.model_fields)
                | set(schema.PrimaryTable.model_fields)
                | set(schema.AffnistSettings.model_fields) | set(schema.RotationSettings.model_fields)
                | set(schema.AffineRangesTable.model_fields) | set(TRAIN_KEYS)
                | {f.name for f in dataclasses.fields(CapsNetConfig)} | {f.name for f in dataclasses.fields(PooledCNNConfig)})
    assert expected <= keys, expected - keys
    assert len(CASES) > 300


@pytest.mark.parametrize("data, key", CASES, ids=[f"{key}-{i}" for i, (_, key) in enumerate(CASES)])
def test_every_bad_spec_value_is_refused_naming_file_and_key(data, key):
    with pytest.raises(SpecError) as refused:
        parse_spec(data, "bad.toml")
    message = str(refused.value)
    assert message.startswith("bad.toml: ") and key in message and "\n" not in message


def test_the_bases_are_valid():
    for base in (BASE, AFFNIST, ROTATION):
        parse_spec(copy.deepcopy(base), "good.toml")


# --- the command line -----------------------------------------------------------------------

COMMANDS = {("studies", command): options for command, options in cli.OPTIONS.items()}
COMMANDS[("bench", None)] = bench_cli.OPTIONS


def option_cases():
    for (program, command), options in COMMANDS.items():
        for option in options:
            if option.owner is not None:
                annotation = dataclass_annotation(option.owner, option.attribute)
                for value in bad_values(annotation):
                    if isinstance(value, (list, tuple)):
                        if not option.listed or not value:
                            continue
                        value = ",".join(map(str, value))
                    yield program, command, option.flag, str(value)
            elif option.argparse_kwargs.get("action") in ("store_true",):
                yield program, command, option.flag + "=yes", None
            elif "choices" in option.argparse_kwargs:
                yield program, command, option.flag, "no-such-choice"
            else:
                yield program, command, option.flag, FREE_TEXT_CASES[(program, option.flag)]


# Options whose text is judged where it is used: each gets a value that must be refused there.
FREE_TEXT_CASES = {
    ("studies", "--option"): "no_equals_sign",
    ("studies", "--data-root"): "/nonexistent/data-root",
    ("studies", "--study"): "no-such-study",
    ("studies", "--storage"): "not-a-storage",
    ("studies", "--results"): "/proc/no-such-results",
    ("studies", "--from"): "sqlite:////nonexistent/x.db",
    ("studies", "--to"): "not-a-storage",
    ("studies", "--port"): "70000",
    ("bench", "--out"): "/proc/no-such-results",
}
OPTION_CASES = list(option_cases())


def test_every_option_is_covered():
    flags = {(program, command, option.flag) for (program, command), options in COMMANDS.items() for option in options}
    covered = {(program, command, flag.split("=")[0]) for program, command, flag, _ in OPTION_CASES}
    assert flags == covered


@pytest.mark.parametrize("program, command, flag, value", OPTION_CASES,
                         ids=[f"{p}-{c}{f}={v}" for p, c, f, v in OPTION_CASES])
def test_every_bad_option_is_one_line_and_exit_2(program, command, flag, value, run_cli, tmp_path):
    args = ([command] if command else []) + [flag] + ([value] if value is not None else [])
    if program == "studies" and command in ("run", "report") and flag != "--study":
        args += ["--study", "ablation"]
    if program == "studies" and command == "run" and flag != "--profile":
        args += ["--profile", "smoke"]
    if program == "bench":
        args += ["--profile", "smoke", "--models", "cnn_pool", "--batch-sizes", "1", "--no-references"] \
            if flag not in ("--profile", "--models", "--batch-sizes") else []
    done = run_cli(program, *args, env={"CAPSBENCH_RESULTS": tmp_path / "results", "CAPSBENCH_DATA_SOURCES": "present"})
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert not (tmp_path / "results" / "smoke" / "studies.db").exists()  # nothing stored
