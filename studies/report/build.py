"""REPORT.md and every study's tables and figures, rebuilt from the stored trials without training."""
from __future__ import annotations

import platform
from pathlib import Path

import optuna
import pandas as pd

import models
from studies.run_options import RunOptions
from studies.report.accuracy import accuracy_section
from studies.report.findings import CLOSING
from studies.report.multimnist import multimnist_section
from studies.report.paper import TABLE1_MULTIMNIST
from studies.report.robustness import affnist_section, rotation_section
from studies.report.section import Section
from studies.report.staging import staged
from studies.report.trials import load_trials
from studies.spec.study import StudySpec, builtin_names, load_spec

SECTION_BUILDERS = {"accuracy": accuracy_section, "affnist": affnist_section, "rotation": rotation_section,
                    "multimnist": multimnist_section}


def write_report(sections: list[Section], options: RunOptions, out: Path) -> Path:
    import torch

    lines = [f"# capsbench results — profile `{options.profile}`", ""]
    if any(section.findings for section in sections):
        lines += ["## Findings", "", "Every primary comparison each study declares, whatever its sign, with Holm's "
                  "adjustment over the study's primary comparisons; exploratory comparisons are in the sections.", ""]
        for section in sections:
            if section.findings:
                lines += [f"- **{section.findings_heading}**", *(f"  - {sentence}" for sentence in section.findings)]
        lines += ["", CLOSING, ""]
    lines += [
        "Rebuilt from the stored trials by `make report` (no training). Every table states the budget it came "
        "from. Profiles other than `paper` are NOT the paper's protocol; their numbers answer the questions "
        "at a small budget and are not comparable to published ones.",
        "",
        f"Report built with torch {torch.__version__}, optuna {optuna.__version__}, "
        f"Python {platform.python_version()}.",
        "",
    ]
    for section in sections:
        lines += [f"## {section.title}", "", section.markdown]
    path = out / "REPORT.md"
    path.write_text("\n".join(lines))
    return path


def extra_sections(out: Path) -> list[Section]:
    """Sections that other tools left as Markdown in the results directory (the benchmark)."""
    sections = []
    for table in sorted(out.glob("throughput-*.md")):
        # The benchmark's own file starts at heading level 1; nest it under this section.
        body = "\n".join(("##" + line) if line.startswith("#") else line for line in table.read_text().splitlines()[1:])
        csv = table.with_suffix(".csv")
        body += f"\n\nFiles: [{csv.name}]({csv.name}), [{table.name}]({table.name})\n"
        sections.append(Section(f"Throughput ({_measured_on(csv) or table.stem.removeprefix('throughput-')})",
                                body, [table]))
    return sections


def _measured_on(csv: Path) -> str | None:
    """"cpu, AMD EPYC 7B13, fp32" from a benchmark table's first row; None where it cannot be read."""
    try:
        first = pd.read_csv(csv, nrows=1).iloc[0]
    except (OSError, IndexError, ValueError):
        return None
    parts = [str(first.get(column, "")) for column in ("device", "device_name", "dtype")]
    if bool(first.get("compile", False)):
        parts.append("compiled")
    return ", ".join(dict.fromkeys(p for p in parts if p and p != "nan")) or None


def parameter_count(model: str) -> int:
    """Counted on the meta device: no weights are allocated or initialised."""
    import torch

    with torch.device("meta"):
        return sum(p.numel() for p in models.create(model).parameters())


def absent_section(spec: StudySpec, profile: str) -> Section:
    """A built-in study this profile does not run: said so, with the profiles that run it and, for
    MultiMNIST, the paper's column it would fill."""
    runs = [name for name in spec.profiles if name != "smoke"] or list(spec.profiles)
    lines = [f"Not run in the `{profile}` profile: {' and '.join(runs)} profile{'s' if len(runs) > 1 else ''} only "
             f"(`make study PROFILE={runs[0]} STUDY={spec.name}`); at this budget its models would not train to a "
             "meaningful accuracy, and a number near chance is not shown.", ""]
    if spec.kind == "multimnist":
        rows = [{"Model": model, "Routing": routing if routing is not None else "-",
                 "Reconstruction": "-" if recon is None else ("yes" if recon else "no"), "Paper error %": value,
                 "Parameters (ours)": f"{parameter_count(model):,}"}
                for (model, routing, recon), value in TABLE1_MULTIMNIST.items()]
        lines += ["The paper's MultiMNIST column, which the standard and paper profiles reproduce (paper parameters: "
                  "CapsNet 11.36M, baseline 24.56M):", "", pd.DataFrame(rows).to_markdown(index=False), ""]
    return Section(f"{spec.title} — {spec.dataset}", "\n".join(lines), [])


def build_report(specs: list[StudySpec], options: RunOptions, out: Path) -> Path:
    """Every file written whole into `out` (studies/report/staging.py); returns REPORT.md's path."""
    with staged(out) as staging:
        sections = [SECTION_BUILDERS[spec.kind](load_trials(spec, options), staging)
                    for spec in specs if spec.kind in SECTION_BUILDERS]
        ran = {spec.name for spec in specs}
        for name in builtin_names():
            spec = load_spec(name)
            if name not in ran and options.profile not in spec.profiles and spec.kind in SECTION_BUILDERS:
                sections.append(absent_section(spec, options.profile))
        report = write_report(sections + extra_sections(out), options, staging)
    return out / report.name
