"""The version ranges in pyproject.toml: the libraries whose API the suite is written against are
bounded above at the next major release after the one installed (the one the suite is tested
with), and the installed releases lie inside every range."""
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
# The APIs the code is written against: autocast, compile and cpp_extension; the storage and trial API;
# the validators of every config.
BOUNDED = ("torch", "torchvision", "optuna", "pydantic")


def requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = [Requirement(line) for line in project["dependencies"]]
    return {requirement.name: requirement for requirement in listed}


@pytest.mark.parametrize("name", BOUNDED)
def test_the_upper_bound_is_the_next_major_release(name):
    specifiers = {spec.operator: Version(spec.version) for spec in requirements()[name].specifier}
    assert set(specifiers) == {">=", "<"}, f"{name}: a lower bound and an exclusive upper bound, not {specifiers}"
    assert specifiers["<"] == Version(f"{Version(version(name)).major + 1}"), name


def test_the_installed_releases_lie_inside_the_ranges():
    outside = {name: version(name) for name, requirement in requirements().items()
               if not requirement.specifier.contains(Version(version(name)).base_version, prereleases=True)}
    assert not outside
