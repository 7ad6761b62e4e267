"""One study's part of REPORT.md: its Markdown, the files it wrote and its findings."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from studies.report.trials import StudyTrials
from studies.spec.study import StudySpec


@dataclass
class Section:
    title: str
    markdown: str
    files: list[Path]
    # Sentences for the findings at the top of REPORT.md, each with its number and interval, under
    # `findings_heading` (the study, its data and its budget).
    findings: list[str] = field(default_factory=list)
    findings_heading: str = ""


def empty_section(spec: StudySpec) -> Section:
    return Section(f"{spec.title} — {spec.dataset}", "_No completed trials yet._\n", [])


def left_out_lines(trials: StudyTrials) -> list[str]:
    """Models of the spec that this profile leaves out, and the profiles that run them: never a
    model near chance beside the others."""
    profile = trials.profile
    if profile.models is None:
        return []
    lines = []
    for model in dict.fromkeys(arm.model for arm in trials.spec.arms):
        if model in profile.models:
            continue
        elsewhere = [name for name, other in trials.spec.profiles.items()
                     if name != profile.name and (other.models is None or model in other.models)]
        where = " and ".join(p for p in elsewhere if p != "smoke") or "no other profile"
        lines.append(f"- `{model}`: {where} profile{'s' if ' and ' in where else ''} only; its budget here would not "
                     "train it to a meaningful accuracy, so it is left out rather than shown near chance")
    return lines
