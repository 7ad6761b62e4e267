"""Writing tables and figures to disk the same way everywhere (booktabs LaTeX, PNG at 120 dpi)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on these machines
import matplotlib.pyplot as plt
import pandas as pd


def write_latex(table: pd.DataFrame, path: Path, caption: str) -> None:
    styler = table.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1)
    latex = styler.to_latex(hrules=True, caption=caption, position="htbp")
    path.write_text(latex.replace("±", r"$\pm$").replace("−", "$-$"))


def save_figure(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(table: pd.DataFrame) -> str:
    """A pipe table of already formatted cells (no re-parsing of numbers that were rounded on purpose)."""
    return table.to_markdown(index=False, disable_numparse=True)


def write_formatted(shown: pd.DataFrame, out: Path, name: str, caption: str) -> list[Path]:
    """One formatted table as Markdown and booktabs LaTeX: <name>.md and <name>.tex."""
    md, tex = out / f"{name}.md", out / f"{name}.tex"
    md.write_text(markdown(shown) + "\n")
    write_latex(shown, tex, caption)
    return [md, tex]


def write_table_files(summary: pd.DataFrame, trials: pd.DataFrame, shown: pd.DataFrame, out: Path, stem: str,
                      table_name: str, caption: str) -> list[Path]:
    """A study's tables: the summary and every trial as CSV (<stem>.csv, <stem>-trials.csv), and the
    formatted table as Markdown and LaTeX (<stem>-<table_name>.md, .tex)."""
    files = [out / f"{stem}.csv", out / f"{stem}-trials.csv"]
    summary.to_csv(files[0], index=False)
    trials.to_csv(files[1], index=False)
    return files + write_formatted(shown, out, f"{stem}-{table_name}", caption)
