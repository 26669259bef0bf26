"""Rendering: the sections of ``stnrepro.results.layout`` as Markdown, LaTeX, terminal text
(all through ``tabulate``, one code path), CSV (``csv``) and a PNG bar chart (matplotlib).

The output depends only on the records (no dates, no paths, stable ordering), so the same
records always give byte-identical files; ``write_table`` writes all four atomically.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tabulate import SEPARATING_LINE, DataRow, Line, TableFormat, tabulate

from stnrepro.results.layout import (
    EXTRA_TITLE,
    Column,
    CsvValue,
    MeanStd,
    Section,
    Signed,
    Value,
    csv_rows,
    sections,
    tex_escape,
)
from stnrepro.results.model import GROUP_PAPER, GROUP_PRIOR, TableData, TableError

# --------------------------------------------------------------------------- text formats


def _booktabs(n_columns: int) -> TableFormat:
    """tabulate's ``latex_booktabs`` without its escaping: our cells carry LaTeX already."""
    row = DataRow("", "&", r"\\")
    return TableFormat(
        lineabove=Line(r"\begin{tabular}{l" + "r" * (n_columns - 1) + "}\n\\toprule", "", "", ""),
        linebelowheader=Line(r"\midrule", "", "", ""),
        linebetweenrows=None,
        linebelow=Line("\\bottomrule\n\\end{tabular}", "", "", ""),
        headerrow=row,
        datarow=row,
        padding=1,
        with_header_hide=None,
    )


@dataclass(frozen=True)
class _Style:
    """How one format writes the shared sections."""

    pm: str  # between mean and std
    dash: str  # no value
    n: str  # the n in "(n=k)"
    text: Callable[[str], str]  # escapes a text cell
    signed: Callable[[str], str]  # wraps a signed number
    header: Callable[[Column], str]
    caption: Callable[[str], str]  # a row group's caption row
    heading: Callable[[str, int], list[str]]  # (title, section index) -> lines
    note: str  # prefix of a note line
    remark: str  # prefix of a sentence said instead of an empty table
    gap: tuple[str, ...]  # lines between the notes and the table
    tablefmt: Callable[[int], str | TableFormat]  # from the number of columns
    rules: bool  # a horizontal rule between row groups


def _md_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|")


MARKDOWN = _Style(
    pm=" ± ",
    dash="—",
    n="n",
    text=_md_escape,
    signed=str,
    header=lambda col: _md_escape(col.title),
    caption=lambda text: f"***{_md_escape(text)}***",
    heading=lambda title, i: ["", f"## {title}", ""] if i else [f"# {title}", ""],
    note="- ",
    remark="",
    gap=("",),
    tablefmt=lambda n: "pipe",
    rules=False,  # a pipe table has no rules between rows
)
LATEX = _Style(
    pm=r" $\pm$ ",
    dash="---",
    n="$n$",
    text=tex_escape,
    signed=lambda text: f"${text}$",
    header=lambda col: col.latex if col.latex is not None else tex_escape(col.title),
    caption=lambda text: rf"\emph{{{tex_escape(text)}}}",
    heading=lambda title, i: ["", f"% {title}"] if i else [f"% {title}"],
    note="% ",
    remark="% ",
    gap=(),
    tablefmt=_booktabs,
    rules=True,
)
TERMINAL = _Style(
    pm=" ± ",
    dash="—",
    n="n",
    text=str,
    signed=str,
    header=lambda col: col.short if col.short is not None else col.title,
    caption=str,
    heading=lambda title, i: ["", title] if i else [title],
    note="",
    remark="",
    gap=("",),
    tablefmt=lambda n: "simple",
    rules=True,
)


def _cell(value: Value, style: _Style) -> str:
    if value is None:
        return style.dash
    if isinstance(value, str):
        return style.text(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Signed):
        return style.signed(f"{round(value.value, 1) + 0.0:+.1f}")  # + 0.0: no "-0.0"
    assert isinstance(value, MeanStd)
    if value.mean is None:
        return style.dash
    d = value.digits
    text = f"{value.mean:.{d}f}" + ("" if value.std is None else f"{style.pm}{value.std:.{d}f}")
    return text if value.n is None else f"{text} ({style.n}={value.n})"


def _table(section: Section, style: _Style) -> str:
    n = len(section.columns)
    rows: list[object] = []
    for i, group in enumerate(section.groups):
        if i and style.rules:
            rows.append(SEPARATING_LINE)
        if group.caption is not None:
            rows.append([style.caption(group.caption), *[""] * (n - 1)])
        rows += [[_cell(v, style) for v in row] for row in group.rows]
    return tabulate(
        rows,
        headers=[style.header(col) for col in section.columns],
        tablefmt=style.tablefmt(n),
        colalign=("left", *["right"] * (n - 1)),
        disable_numparse=True,
    )


def _render(table: TableData, style: _Style, attention: bool | None) -> str:
    out: list[str] = []
    for i, section in enumerate(sections(table, attention)):
        out += style.heading(section.title, i)
        out += [style.note + line for line in section.notes]
        if any(group.rows for group in section.groups):
            out += [*style.gap, _table(section, style)]
        else:
            out += [*style.gap, style.remark + section.empty]
    return "\n".join(out) + "\n"


def render_markdown(table: TableData, attention: bool | None = None) -> str:
    """Markdown: ``#`` title, notes as a list, pipe tables (``attention``: see ``sections``)."""
    return _render(table, MARKDOWN, attention)


def render_latex(table: TableData, attention: bool | None = None) -> str:
    """booktabs ``tabular``s to ``\\input``; titles and notes go in ``%`` comments."""
    return _render(table, LATEX, attention)


def render_terminal(table: TableData, attention: bool | None = None) -> str:
    """Plain text for a terminal; short headers (units in them) to fit 80 columns."""
    return _render(table, TERMINAL, attention)


def print_table(table: TableData, attention: bool | None = None) -> None:
    """Show the table in the terminal, with the same notes as the files."""
    print(render_terminal(table, attention), end="")


# --------------------------------------------------------------------------- CSV


def _csv_value(value: CsvValue) -> str:
    if value is None:
        return ""
    if isinstance(value, str | int):
        return str(value)
    return f"{value + 0.0:.4f}"


def render_csv(table: TableData, attention: bool | None = None) -> str:
    """Machine-readable rows (columns: ``layout.CSV_FIELDS``); floats with 4 decimals."""
    header, rows = csv_rows(table, attention)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([_csv_value(v) for v in row] for row in rows)
    return buf.getvalue()


# --------------------------------------------------------------------------- plot


def render_plot(table: TableData, path: str | os.PathLike[str]) -> None:
    """PNG bar chart: ours (mean ± std) beside the paper's value, for paper rows and extras."""
    # Figure + Agg canvas directly: no pyplot, so no global backend state is touched.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    rows = [r for r in table.rows if r.group != GROUP_PRIOR]
    fig = Figure(figsize=(max(6.0, 1.3 * len(rows) + 2.0), 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.38
    xs = list(range(len(rows)))
    shown: list[float] = []
    for x, row in zip(xs, rows, strict=True):
        stats = row.stats
        if stats is not None and stats.mean is not None:
            err = [stats.std] if stats.std is not None else None
            ax.bar(x - width / 2, stats.mean, width, yerr=err, capsize=4, color="tab:blue")
            ax.annotate(
                f"{stats.mean:.{table.digits}f}\nn={stats.n}",
                (x - width / 2, stats.mean + (stats.std or 0.0)),
                ha="center",
                va="bottom",
                fontsize=7,
                xytext=(0, 2),
                textcoords="offset points",
            )
            shown += [stats.mean - (stats.std or 0.0), stats.mean + (stats.std or 0.0)]
        if table.compare_to_paper and row.paper_value is not None:
            ax.bar(x + width / 2, row.paper_value, width, color="tab:gray", hatch="//")
            ax.annotate(
                f"{row.paper_value:.1f}",
                (x + width / 2, row.paper_value),
                ha="center",
                va="bottom",
                fontsize=7,
                xytext=(0, 2),
                textcoords="offset points",
            )
            shown.append(row.paper_value)
    if table.percent and shown:  # zoom in: differences of ~1 pp vanish on a 0-100 axis
        low = max(0.0, math.floor(min(shown) / 5.0) * 5.0 - 5.0)
        ax.set_ylim(low, min(100.0, math.ceil(max(shown) / 5.0) * 5.0 + 5.0))
    ax.set_xticks(xs, [r.label.replace(" (paper:", "\n(paper:") for r in rows], fontsize=7)
    ax.set_ylabel(f"{table.metric}{' (%)' if table.percent else ''}")
    ax.set_title(f"{table.dataset} / {table.backbone}: ours vs. {table.paper_source}", fontsize=9)
    handles = [Patch(color="tab:blue", label="ours (mean ± std)")]
    if table.compare_to_paper:
        handles.append(Patch(facecolor="tab:gray", hatch="//", label="paper"))
    ax.legend(handles=handles, fontsize=7, loc="upper left")
    n_paper = sum(r.group == GROUP_PAPER for r in rows)
    if n_paper < len(rows):
        ax.axvline(n_paper - 0.5, color="black", linestyle=":", linewidth=0.8)
        ax.text(
            n_paper - 0.45,
            1.0,
            EXTRA_TITLE,
            transform=ax.get_xaxis_transform(),
            ha="left",
            va="top",
            fontsize=7,
            style="italic",
        )
    fig.tight_layout()
    # No "Software" metadata: the PNG then depends on the records (and matplotlib) only.
    fig.savefig(path, format="png", metadata={"Software": None})


# --------------------------------------------------------------------------- output


def default_table_name(table: TableData) -> str:
    """``<dataset>_table``, made safe for a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", table.dataset).strip("._") + "_table"


def _check_name(name: str) -> None:
    if not name or name.startswith(".") or re.search(r"[/\\\x00]", name):
        raise TableError(f"--name {name!r}: expected a plain file stem (no '/', not hidden)")


def write_table(table: TableData, out_dir: str | os.PathLike[str], name: str) -> list[Path]:
    """Write ``<name>.md/.csv/.tex/.png`` to ``out_dir`` all-or-nothing (temp files, renames).

    Everything is rendered into hidden temp files first; only when all four exist are
    they renamed into place, so a failure leaves no half-written table behind.
    """
    _check_name(name)
    out = Path(out_dir)
    texts = {
        ".md": render_markdown(table),
        ".csv": render_csv(table),
        ".tex": render_latex(table),
    }
    missing = [p for p in (out, *out.parents) if not p.exists()]
    temps: dict[str, Path] = {}
    try:
        out.mkdir(parents=True, exist_ok=True)
        for suffix in (".md", ".csv", ".tex", ".png"):
            fd, tmp = tempfile.mkstemp(prefix=f".{name}{suffix}.", suffix=".tmp", dir=out)
            os.close(fd)
            temps[suffix] = Path(tmp)
            if suffix == ".png":
                render_plot(table, tmp)
            else:
                Path(tmp).write_text(texts[suffix], encoding="utf-8", newline="\n")
    except BaseException as exc:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
        for d in missing:  # leaf first: remove only directories this call created
            try:
                d.rmdir()
            except OSError:
                break
        if isinstance(exc, OSError):
            raise TableError(f"{out}: cannot write the table ({exc.strerror or exc})") from None
        raise
    paths = []
    for suffix, tmp in temps.items():
        final = out / f"{name}{suffix}"
        os.chmod(tmp, 0o644)
        os.replace(tmp, final)
        paths.append(final)
    return paths
