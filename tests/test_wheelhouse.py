"""The wheelhouse for GPU machines without internet (bench/wheelhouse.py): built from a package index,
installed with `pip --no-index` on top of a PyTorch that is already there, never replacing it.

The install test builds a real wheelhouse for this Python and platform (its wheels come from the
index, as `make wheelhouse` gets them) and installs it into a fresh venv whose only other packages
are a stand-in for a GPU machine's own stack: this venv's site-packages, less every distribution
the wheelhouse carries and less capsbench.
"""
import gzip
import importlib.metadata
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from packaging.tags import sys_tags

from bench import wheelhouse

ROOT = Path(__file__).resolve().parents[1]


def _running_python() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _this_platform() -> str:
    return next(tag.platform for tag in sys_tags() if tag.platform.startswith("manylinux_"))


def _stand_in_machine_site(into: Path, carried: set[str]) -> Path:
    """This venv's site-packages as symlinks, less the distributions in `carried` and capsbench: a
    GPU machine's own stack (torch included) as the wheelhouse expects to find it."""
    site = Path(sysconfig.get_path("purelib"))
    left_out = set()
    for dist in importlib.metadata.distributions(path=[str(site)]):
        name = wheelhouse.canonical(dist.metadata["Name"])
        if name in carried or name == "capsbench":
            # RECORD lists every file, the .dist-info folder's too
            left_out.update(Path(str(file)).parts[0] for file in dist.files or [] if not str(file).startswith(".."))
    into.mkdir()
    for entry in site.iterdir():
        if entry.name not in left_out and not entry.name.startswith("__editable__"):
            (into / entry.name).symlink_to(entry)
    return into


def _venv_site(python: Path) -> Path:
    done = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True)
    return Path(done.stdout.strip())


@pytest.mark.e2e
def test_a_fresh_venv_installs_capsbench_from_the_wheelhouse_without_an_index_keeping_its_torch(tmp_path):
    house = tmp_path / "wheelhouse"
    manifest = wheelhouse.build(house, python=_running_python(), platform=_this_platform(), datasets=())
    carried = {wheelhouse.canonical(package["name"]) for package in manifest["packages"]}
    # What a GPU machine's stack lacks; what it has (torch, numpy, ...) must not be carried.
    assert {"optuna", "sqlalchemy", "alembic", "pydantic", "pydantic-core", "annotated-types", "statsmodels",
            "tabulate"} <= carried
    assert not carried & {"torch", "torchvision", "numpy", "pandas", "scipy", "matplotlib", "tqdm", "pytest"}
    assert (house / manifest["capsbench"]).is_file() and (house / ".gitignore").is_file()

    machine = _stand_in_machine_site(tmp_path / "machine-site", carried)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True)
    python = tmp_path / "venv" / "bin" / "python"
    site = _venv_site(python)
    (site / "gpu-machine-stack.pth").write_text(f"{machine}\n")  # pip too comes from there
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    installed = subprocess.run([str(python), "-m", "bench.wheelhouse", "install", str(house)], cwd=ROOT, env=env,
                               capture_output=True, text=True)
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-3000:]
    assert (site / "studies" / "cli.py").is_file() and (site / "optuna").is_dir()
    assert not list(site.glob("torch*")), "the install brought a torch of its own"

    # Outside the repository: studies comes from the venv, torch from the machine's stack.
    helped = subprocess.run([str(python), "-m", "studies", "--help"], cwd=tmp_path, env=env, capture_output=True,
                            text=True)
    assert helped.returncode == 0, helped.stderr[-3000:]
    assert "python -m studies" in helped.stdout and "train" in helped.stdout


@pytest.mark.data
def test_the_data_loader_accepts_the_mnist_files_a_wheelhouse_carries(tmp_path):
    from studies.data import datasets

    try:
        datasets.prepare("mnist", sources=["present"])
    except Exception as exc:
        pytest.skip(f"MNIST not prepared: {exc}")
    packed = wheelhouse._pack_data(["mnist"], datasets.default_data_root(), tmp_path / "house")
    root = tmp_path / "data"
    placed = wheelhouse.unpack_data(tmp_path / "house", {"data": packed}, root)
    assert sorted(path.name for path in placed) == sorted(wheelhouse.RAW_FILES)
    with gzip.open(tmp_path / "house" / packed[0], "rb") as compressed:
        assert compressed.read(4) == (datasets.default_data_root() / "MNIST" / "raw" / placed[0].name).read_bytes()[:4]
    assert datasets.prepare("mnist", root, sources=["present"]) == root / "MNIST" / "raw"


def test_the_wheelhouse_puts_data_where_the_loader_looks(monkeypatch, tmp_path):
    from studies.data import datasets

    assert wheelhouse.default_data_root() == datasets.default_data_root()
    monkeypatch.setenv("CAPSBENCH_DATA", str(tmp_path))
    assert wheelhouse.default_data_root() == datasets.default_data_root() == tmp_path
    assert {name: datasets.get_info(name).folder for name in wheelhouse.DATASET_FOLDERS} \
        == wheelhouse.DATASET_FOLDERS
    assert wheelhouse.RAW_FILES == datasets.RAW_FILES


def test_manylinux_platforms_take_every_older_manylinux_wheel():
    tags = wheelhouse.platform_tags("manylinux_2_28_x86_64")
    assert tags[0] == "manylinux_2_28_x86_64"
    assert {"manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"} <= set(tags)
    assert not any("2_29" in tag or "aarch64" in tag for tag in tags)
    assert wheelhouse.platform_tags("manylinux2014_x86_64")[:2] == ["manylinux_2_17_x86_64", "manylinux2014_x86_64"]
    with pytest.raises(wheelhouse.WheelhouseError, match="not a Linux platform tag"):
        wheelhouse.platform_tags("macosx_11_0_arm64")


def test_an_install_for_another_python_or_from_a_folder_that_is_no_wheelhouse_is_one_line(tmp_path, capsys):
    assert wheelhouse.main(["install", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    (tmp_path / "manifest.json").write_text(json.dumps({"python": "3.0", "capsbench": "x.whl", "packages": [],
                                                        "data": []}))
    assert wheelhouse.main(["install", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert "Python 3.0" in error and "\n" not in error


def test_a_build_never_replaces_a_folder_that_is_no_wheelhouse_nor_takes_a_bad_target(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep me")
    assert wheelhouse.main(["build", "--out", str(tmp_path)]) == 2
    assert "not a wheelhouse" in capsys.readouterr().err
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    for bad, said in ((["--python", "three"], "not a Python version"), (["--platform", "win_amd64"], "not a Linux")):
        assert wheelhouse.main(["build", "--out", str(tmp_path / "new"), *bad]) == 2
        error = capsys.readouterr().err.strip()
        assert said in error and "\n" not in error
    assert not (tmp_path / "new").exists()


def test_an_install_pins_the_machines_own_torch_and_torchvision():
    import torch
    import torchvision
    from packaging.version import Version

    pins = dict(pin.split("==") for pin in wheelhouse.machine_own_pins())
    assert Version(pins["torch"]).public == Version(torch.__version__).public
    assert Version(pins["torchvision"]).public == Version(torchvision.__version__).public
