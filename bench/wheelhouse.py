"""A wheelhouse for a GPU machine without internet.

`python -m bench.wheelhouse build` (`make wheelhouse`), on a machine with a package index, writes a
folder (default wheelhouse/) for one Python version and manylinux platform (default: the GPU
machines' Python 3.12 on manylinux_2_28_x86_64, the glibc floor of PyTorch's own wheels since 2.6):

- wheels of what capsbench needs beyond the usual PyTorch stack (COMMON_STACK, which such machines
  ship): the dependency closure of pyproject.toml's dependencies, less torch and torchvision (the
  machine's own: a wheel of either must match its CUDA and driver) and less the closure of the
  usual stack; `--with-common-stack` keeps that too, `--add REQ` adds more;
- capsbench itself as a wheel;
- MNIST's four IDX files, gzip-compressed (Fashion-MNIST's too with `--fashion-mnist`);
- manifest.json: the Python and platform it is for and what it holds.

`python -m bench.wheelhouse install PATH` (what `make gpu-check|study WHEELHOUSE=PATH` runs), on the
machine without internet, installs capsbench from PATH with `pip --no-index` into the running
interpreter's environment (a venv with the system site packages, or none) on top of the machine's
own PyTorch, which a constraint pins to the installed version so pip can never replace it; then it
puts the data, uncompressed, where the data loader looks.

Only the standard library is imported at the top: `install` runs before anything else is there.
"""
from __future__ import annotations

import argparse
import gzip
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "wheelhouse"
DEFAULT_PYTHON = "3.12"
DEFAULT_PLATFORM = "manylinux_2_28_x86_64"
DEFAULT_MAX_MB = 40.0
# Fashion-MNIST's four files add about 30 MB compressed.
DEFAULT_MAX_MB_WITH_FASHION = 80.0
# What a GPU machine's PyTorch stack commonly ships; with their dependencies they are left out.
COMMON_STACK = ("numpy", "pandas", "scipy", "matplotlib", "seaborn", "tqdm", "pytest", "pytest-xdist")
# The machine's own, never in a wheelhouse and never replaced by an install from one.
MACHINE_OWN = ("torch", "torchvision")
# The dataset folders under the data root (studies/data/datasets.py: <root>/<folder>/raw/).
DATASET_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
MANIFEST = "manifest.json"
EXIT_BAD_INPUT = 2


class WheelhouseError(Exception):
    """A step that cannot go on, in one line for the user: bad input (exit code 2) unless
    `bad_input` is false (pip failed: exit code 1)."""

    def __init__(self, message: str, bad_input: bool = True):
        super().__init__(message)
        self.bad_input = bad_input


def default_data_root() -> Path:
    """Where the data loader looks (studies.data.datasets.default_data_root, which imports torch)."""
    return Path(os.environ["CAPSBENCH_DATA"]) if os.environ.get("CAPSBENCH_DATA") else ROOT / "data"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ---- build ----------------------------------------------------------------------------------------------------------

# The manylinux tags of PEP 513, 571 and 599, by the glibc minor version PEP 600 names them with.
LEGACY_MANYLINUX = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}


def _linux_platform(platform: str) -> tuple[int | None, str]:
    """(glibc minor version or None, architecture) of a Linux platform tag; anything else is refused."""
    legacy = "|".join(LEGACY_MANYLINUX.values())
    match = re.fullmatch(rf"(?:manylinux_2_(\d+)|({legacy})|linux)_(x86_64|aarch64|ppc64le|s390x|i686)", platform)
    if match is None:
        raise WheelhouseError(f"not a Linux platform tag: {platform!r} (e.g. manylinux_2_28_x86_64, "
                              "manylinux_2_28_aarch64)")
    glibc = {name: minor for minor, name in LEGACY_MANYLINUX.items()}.get(match.group(2), match.group(1))
    return (int(glibc) if glibc is not None else None), match.group(3)


def platform_tags(platform: str) -> list[str]:
    """`manylinux_2_28_x86_64` and every older manylinux tag a machine that runs it also runs (pip takes
    only the tags it is given); `linux_<arch>` as it is."""
    glibc, arch = _linux_platform(platform)
    if glibc is None:
        return [platform]
    tags = []
    for minor in range(glibc, 4, -1):
        tags.append(f"manylinux_2_{minor}_{arch}")
        if minor in LEGACY_MANYLINUX:
            tags.append(f"{LEGACY_MANYLINUX[minor]}_{arch}")
    return tags


def _target_flags(python: str, platform: str) -> list[str]:
    flags = ["--only-binary=:all:", "--python-version", python]
    for tag in platform_tags(platform):
        flags += ["--platform", tag]
    return flags


def project_dependencies() -> list[str]:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def _pip(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "pip", *args, "--quiet", "--disable-pip-version-check"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")] or done.stderr.splitlines()
        raise WheelhouseError(f"pip {args[0]} failed: {' '.join(errors[-2:]) or 'no message'}", bad_input=False)
    return done


def resolve(requirements: list[str], python: str, platform: str) -> list[dict]:
    """What pip would install for `requirements` on the target, without installing: the report's items."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        _pip("install", "--dry-run", "--ignore-installed", "--report", str(report), *_target_flags(python, platform),
             *requirements)
        return json.loads(report.read_text())["install"]


def _marker_environment(python: str, platform: str) -> dict[str, str]:
    return {"python_version": python, "python_full_version": f"{python}.0", "sys_platform": "linux",
            "platform_system": "Linux", "platform_machine": _linux_platform(platform)[1], "os_name": "posix",
            "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}


def closure(roots: list[str], items: list[dict], python: str, platform: str) -> set[str]:
    """The canonical names `roots` need, transitively, among the resolved `items` (never entering
    MACHINE_OWN: what only torch needs comes with the machine's torch)."""
    from packaging.requirements import Requirement

    by_name = {canonical(item["metadata"]["name"]): item for item in items}
    environment = _marker_environment(python, platform)
    seen: set[str] = set()
    pending = [Requirement(root) for root in roots]
    while pending:
        requirement = pending.pop()
        name = canonical(requirement.name)
        if name in MACHINE_OWN or name not in by_name:
            continue
        # A name is walked once with no extras, once per extra asked for.
        keys = [name] + [f"{name}[{extra}]" for extra in sorted(requirement.extras)]
        if all(key in seen for key in keys):
            continue
        seen.update(keys)
        for text in by_name[name]["metadata"].get("requires_dist", []):
            needed = Requirement(text)
            extras = [""] + sorted(requirement.extras)
            if needed.marker is None or any(needed.marker.evaluate(dict(environment, extra=extra)) for extra in extras):
                pending.append(needed)
    return {key for key in seen if "[" not in key}


def plan_packages(python: str, platform: str, add: list[str], with_common_stack: bool) -> list[dict]:
    """The resolved items (name, version, url) the wheelhouse holds."""
    from packaging.requirements import Requirement

    ours = [text for text in project_dependencies() + add if canonical(Requirement(text).name) not in MACHINE_OWN]
    named = {canonical(Requirement(text).name) for text in ours}
    items = resolve(ours + [name for name in COMMON_STACK if canonical(name) not in named], python, platform)
    wanted = closure(ours, items, python, platform)
    if not with_common_stack:
        wanted -= closure(list(COMMON_STACK), items, python, platform)
    return sorted((item for item in items if canonical(item["metadata"]["name"]) in wanted),
                  key=lambda item: canonical(item["metadata"]["name"]))


def _download(items: list[dict], python: str, platform: str, into: Path) -> None:
    pins = [f"{item['metadata']['name']}=={item['metadata']['version']}" for item in items]
    _pip("download", "--no-deps", "--dest", str(into), *_target_flags(python, platform), *pins)


def _capsbench_wheel(into: Path) -> Path:
    """capsbench's own wheel, built from a copy of its sources (setuptools leaves build/ and stale
    files behind in a tree it builds in)."""
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "capsbench"
        source.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(ROOT / name, source / name)
        for package in ("models", "studies", "bench"):
            shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        # The running environment's setuptools where it has one: no second download.
        isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
        _pip("wheel", "--no-deps", *isolation, "--wheel-dir", str(into), str(source))
    return next(into.glob("capsbench-*.whl"))


def _pack_data(datasets: list[str], data_root: Path, into: Path) -> list[str]:
    packed = []
    for dataset in datasets:
        folder = DATASET_FOLDERS[dataset]
        raw = data_root / folder / "raw"
        missing = [name for name in RAW_FILES if not (raw / name).is_file()]
        if missing:
            raise WheelhouseError(f"{dataset}: {', '.join(missing)} missing in {raw} (`make data` puts them there)")
        target = into / "data" / folder / "raw"
        target.mkdir(parents=True)
        for name in RAW_FILES:
            # Level 6: within a few percent of 9's size, in a fraction of its time.
            with (raw / name).open("rb") as source, gzip.open(target / f"{name}.gz", "wb", compresslevel=6) as gz:
                shutil.copyfileobj(source, gz, 1 << 20)
            packed.append(f"data/{folder}/raw/{name}.gz")
    return packed


def _size_mb(folder: Path) -> float:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) / 1e6


def _is_wheelhouse(folder: Path) -> bool:
    """An empty folder, or one this module wrote (its manifest has our keys): the only kinds `build`
    may replace."""
    if not folder.is_dir():
        return False
    if not any(folder.iterdir()):
        return True
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and {"capsbench", "packages", "left_to_the_machine"} <= set(manifest)


def build(out: Path, python: str = DEFAULT_PYTHON, platform: str = DEFAULT_PLATFORM, add: list[str] = (),
          with_common_stack: bool = False, datasets: list[str] = ("mnist",), data_root: Path | None = None,
          max_mb: float | None = None) -> dict:
    """Write the wheelhouse to `out` (replacing an earlier wheelhouse there, never another folder);
    return its manifest."""
    if not re.fullmatch(r"3\.\d+", python):
        raise WheelhouseError(f"not a Python version: {python!r} (e.g. 3.12)")
    platform_tags(platform)
    if out.exists() and not _is_wheelhouse(out):
        raise WheelhouseError(f"{out} exists and is not a wheelhouse written here (no {MANIFEST} of ours); choose "
                              "another --out")
    if max_mb is None:  # the usual stack is hundreds of MB: no default limit for it
        max_mb = (float("inf") if with_common_stack
                  else DEFAULT_MAX_MB_WITH_FASHION if "fashion_mnist" in datasets else DEFAULT_MAX_MB)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp's is private; a wheelhouse is copied and read by others
    try:
        data = _pack_data(list(datasets), data_root or default_data_root(), staging)
        items = plan_packages(python, platform, list(add), with_common_stack)
        _download(items, python, platform, staging)
        own = _capsbench_wheel(staging)
        (staging / ".gitignore").write_text("# written by python -m bench.wheelhouse\n*\n")
        manifest = {
            "python": python, "platform": platform, "capsbench": own.name,
            "packages": [{"name": item["metadata"]["name"], "version": item["metadata"]["version"],
                          "file": item["download_info"]["url"].rsplit("/", 1)[-1]} for item in items],
            "left_to_the_machine": sorted(MACHINE_OWN) + ([] if with_common_stack else sorted(COMMON_STACK)),
            "data": data,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        size = _size_mb(staging)
        if size > max_mb:
            files = [path for path in staging.rglob("*") if path.is_file()]
            largest = sorted(files, key=lambda path: path.stat().st_size, reverse=True)[:3]
            named = ", ".join(f"{path.name} {path.stat().st_size / 1e6:.1f} MB" for path in largest)
            raise WheelhouseError(f"the wheelhouse would be {size:.1f} MB, over --max-mb {max_mb:g} (largest: {named})")
        manifest["megabytes"] = round(size, 1)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


# ---- install --------------------------------------------------------------------------------------------------------

def read_manifest(wheelhouse: Path) -> dict:
    try:
        return json.loads((wheelhouse / MANIFEST).read_text())
    except FileNotFoundError:
        raise WheelhouseError(f"{wheelhouse} is not a wheelhouse (no {MANIFEST}); `make wheelhouse` writes one"
                              ) from None


def machine_own_pins() -> list[str]:
    """`name==version` of the machine's torch and torchvision, as installed; a missing torch is an error."""
    pins = []
    for name in MACHINE_OWN:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            if name == "torch":
                raise WheelhouseError(f"no PyTorch for {sys.executable}: a wheelhouse installs on top of the "
                                      "machine's own (a venv made with --system-site-packages from a Python that has "
                                      "it: `make ... PYTHON=/path/to/that/python3`)") from None
    return pins


def unpack_data(wheelhouse: Path, manifest: dict, data_root: Path) -> list[Path]:
    """The wheelhouse's IDX files, uncompressed, under `data_root` (each written whole, then moved in)."""
    placed = []
    for packed in manifest["data"]:
        relative = Path(packed).relative_to("data").with_suffix("")
        target = data_root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        with gzip.open(wheelhouse / packed, "rb") as source, partial.open("wb") as unpacked:
            shutil.copyfileobj(source, unpacked, 1 << 20)
        os.replace(partial, target)
        placed.append(target)
    return placed


def install(wheelhouse: Path, data_root: Path | None = None) -> None:
    manifest = read_manifest(wheelhouse)
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    if manifest["python"] != running:
        raise WheelhouseError(f"{wheelhouse} holds wheels for Python {manifest['python']}, this is {running} "
                              f"({sys.executable}); build one with "
                              f"`make wheelhouse WHEELHOUSE_ARGS='--python {running}'`")
    pins = machine_own_pins()
    with tempfile.TemporaryDirectory() as scratch:
        constraints = Path(scratch) / "machine-own.txt"
        constraints.write_text("\n".join(pins) + "\n")
        print(f"installing {manifest['capsbench']} and {len(manifest['packages'])} dependencies from {wheelhouse}, "
              f"keeping {', '.join(pins)}", flush=True)
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                               "--no-index", "--find-links", str(wheelhouse), "--constraint", str(constraints),
                               str(wheelhouse / manifest["capsbench"])])
    if done.returncode != 0:
        raise WheelhouseError(f"pip could not install from {wheelhouse} (its message is above)", bad_input=False)
    root = data_root or default_data_root()
    for path in unpack_data(wheelhouse, manifest, root):
        print(f"data: {path}")


# ---- command line ---------------------------------------------------------------------------------------------------

class _OneLineParser(argparse.ArgumentParser):
    """Bad input is one line and exit code 2 (studies/arguments.py has the same, but imports
    packages `install` runs without)."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="python -m bench.wheelhouse", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("build", help="download the wheels and pack the data (needs a package index)")
    make.add_argument("--out", default=str(DEFAULT_OUT), help="the folder to write (default: wheelhouse/)")
    make.add_argument("--python", default=DEFAULT_PYTHON, help=f"the GPU machine's Python (default {DEFAULT_PYTHON})")
    make.add_argument("--platform", default=DEFAULT_PLATFORM, help=f"its platform tag (default {DEFAULT_PLATFORM})")
    make.add_argument("--add", action="append", default=[], metavar="REQ",
                      help="another requirement to carry, with what it needs (repeatable), e.g. psycopg2-binary")
    make.add_argument("--with-common-stack", action="store_true",
                      help=f"also carry the usual stack ({', '.join(COMMON_STACK)}) and its dependencies")
    make.add_argument("--fashion-mnist", action="store_true", help="also carry Fashion-MNIST")
    make.add_argument("--data-root", help="where the IDX files are (default: $CAPSBENCH_DATA or data/)")
    make.add_argument("--max-mb", type=float, help=f"refuse a bigger wheelhouse (default {DEFAULT_MAX_MB:g}, with "
                                                   f"Fashion-MNIST {DEFAULT_MAX_MB_WITH_FASHION:g}, with the common "
                                                   "stack none)")
    put = commands.add_parser("install", help="install from a wheelhouse without a package index, and unpack its data")
    put.add_argument("wheelhouse", help="the folder `build` wrote")
    put.add_argument("--data-root", help="where to put the IDX files (default: $CAPSBENCH_DATA or data/)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    data_root = Path(args.data_root) if args.data_root else None
    try:
        if args.command == "build":
            datasets = ["mnist"] + (["fashion_mnist"] if args.fashion_mnist else [])
            manifest = build(Path(args.out), args.python, args.platform, args.add, args.with_common_stack, datasets,
                             data_root, args.max_mb)
            print(f"wrote {args.out}: {manifest['megabytes']} MB, capsbench and {len(manifest['packages'])} wheels "
                  f"for Python {manifest['python']} on {manifest['platform']}: "
                  + ", ".join(f"{p['name']} {p['version']}" for p in manifest["packages"]))
        else:
            install(Path(args.wheelhouse), data_root)
    except WheelhouseError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT if error.bad_input else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
