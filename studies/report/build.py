"""REPORT.md and every study's tables and figures, rebuilt from the stored trials without training."""
from __future__ import annotations

import platform
from pathlib import Path

import optuna

from studies.engine.runner import RunOptions
from studies.report.accuracy import accuracy_section
from studies.report.findings import CLOSING
from studies.report.robustness import affnist_section, rotation_section
from studies.report.section import Section
from studies.report.trials import load_trials
from studies.spec.study import StudySpec

SECTION_BUILDERS = {"accuracy": accuracy_section, "affnist": affnist_section, "rotation": rotation_section}


def write_report(sections: list[Section], options: RunOptions, out: Path) -> Path:
    import torch

    findings = [sentence for section in sections for sentence in section.findings]
    lines = [f"# capsbench results — profile `{options.profile}`", ""]
    if findings:
        lines += ["## Findings", "", *(f"- {sentence}" for sentence in findings), "", CLOSING, ""]
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
        sections.append(Section(f"Throughput ({table.stem.removeprefix('throughput-')})", body, [table]))
    return sections


def build_report(specs: list[StudySpec], options: RunOptions, out: Path) -> Path:
    sections = [SECTION_BUILDERS[spec.kind](load_trials(spec, options), out)
                for spec in specs if spec.kind in SECTION_BUILDERS]
    return write_report(sections + extra_sections(out), options, out)
