"""One study's part of REPORT.md: its Markdown, the files it wrote and its findings.

Every study kind's section has one skeleton (`study_section`): the budget lines, the kind's own
tables and figures, its paired comparisons, the failed points and the files line, in that order.
A kind supplies only what differs (`SectionParts`); the skeleton writes the rest once."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from studies.report import effects as fx
from studies.report.figures import markdown
from studies.report.findings import budget_phrase, primary_findings
from studies.report.trials import StudyTrials, budget_lines, failure_lines, file_stem, files_line
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


@dataclass
class Comparisons:
    """A study's paired comparisons and how its section introduces them. The skeleton writes their
    files (<stem>-effects.*), shows their table and the exploratory ones left unresolved, and
    draws the findings from their primary rows."""
    effects: pd.DataFrame
    # declared primary comparisons that no row answers (counted in the Holm family as p = 1)
    unanswered: list[fx.Unanswered]
    heading: str  # the Markdown heading above the table
    subject: str  # what the effects are of, in the caption of the files: "paired effects on test error"
    unresolved_heading: str = "Not resolved at this budget:"
    # whether the Markdown embeds the effects figure (the files line names it either way)
    show_figure: bool = True


@dataclass
class SectionParts:
    """What a study kind writes itself; `study_section` places it in the shared order."""
    comparisons: Comparisons
    # tables, notes and figures between the budget lines and the comparisons
    body: list[str]
    # the files the kind wrote for its body, in the order the files line names them
    files: list[Path]
    # how the models trained, stated beside the budget (before the models the profile leaves out)
    recipe: list[str] = field(default_factory=list)
    # the data and the protocol, stated after the models the profile leaves out
    protocol: list[str] = field(default_factory=list)
    # figures that follow the comparisons, and their files
    closing: list[str] = field(default_factory=list)
    closing_files: list[Path] = field(default_factory=list)
    # the findings heading: "<subject> (<data>; <budget>)"; the study's title and no data by default
    findings_subject: str | None = None
    findings_data: str = ""


# A kind's part of the section from its trials, the results directory and the file stem.
PartsBuilder = Callable[[StudyTrials, Path, str], SectionParts]


def section_title(spec: StudySpec) -> str:
    return f"{spec.title} — {spec.dataset}"


def empty_section(spec: StudySpec) -> Section:
    return Section(section_title(spec), "_No completed trials yet._\n", [])


def study_section(trials: StudyTrials, out: Path, build: PartsBuilder) -> Section:
    """A study's section in the shared order: budget, recipe, models left out, data and protocol;
    the kind's body; the paired comparisons; the kind's closing figures; the failed points; the
    files line. A study without completed trials says so and writes nothing."""
    spec = trials.spec
    if trials.frame.empty:
        return empty_section(spec)
    stem = file_stem(spec)
    parts = build(trials, out, stem)
    comparisons = parts.comparisons
    files = [*parts.files, *_write_comparisons(trials, comparisons, out, stem), *parts.closing_files]
    lines = [*budget_lines(trials), *parts.recipe, *left_out_lines(trials), *parts.protocol, "",
             *parts.body, *comparison_lines(trials, comparisons, stem), *parts.closing,
             *failure_lines(trials), files_line(files)]
    return Section(section_title(spec), "\n".join(lines) + "\n", files,
                   findings=primary_findings(trials, comparisons.effects, comparisons.unanswered),
                   findings_heading=_findings_heading(trials, parts))


def _write_comparisons(trials: StudyTrials, comparisons: Comparisons, out: Path, stem: str) -> list[Path]:
    return fx.write_effects(comparisons.effects, out, stem, f"{trials.spec.title}: {comparisons.subject} "
                                                            f"({trials.options.profile} profile)")


def comparison_lines(trials: StudyTrials, comparisons: Comparisons, stem: str) -> list[str]:
    """The effects table with its explanation, the exploratory comparisons left unresolved in
    words, and the effects figure."""
    effects = comparisons.effects
    lines = [comparisons.heading, "", markdown(fx.display_table(effects)), "", fx.EXPLANATION, ""]
    unresolved = fx.unresolved_sentences(effects, standard_hint(trials))
    if unresolved:
        lines += [comparisons.unresolved_heading, "", *unresolved, ""]
    if comparisons.show_figure and len(effects):
        lines += [f"![paired effects]({stem}-effects.png)", ""]
    return lines


def _findings_heading(trials: StudyTrials, parts: SectionParts) -> str:
    subject = parts.findings_subject or trials.spec.title
    data = f"{parts.findings_data}; " if parts.findings_data else ""
    return f"{subject} ({data}{budget_phrase(trials)})"


def standard_hint(trials: StudyTrials) -> str:
    """Where an unresolved comparison may resolve: the larger profiles the spec has."""
    others = [p for p in ("standard", "paper") if p in trials.spec.profiles and p != trials.options.profile]
    return f"the {' or '.join(others)} profile's larger budget" if others else "a larger budget"


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
