"""Rendering: the sections of ``stnrepro.results.layout`` as Markdown, LaTeX, terminal text
(all through ``tabulate``, one code path), CSVs (``csv``: the table and its claims) and a
PNG plot (matplotlib).

The output depends only on the records (no dates, no paths, stable ordering), so the same
records always give byte-identical files; ``write_table`` writes all five atomically.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tabulate import SEPARATING_LINE, DataRow, Line, TableFormat, tabulate

from stnrepro.errors import one_line
from stnrepro.results import digits_layout
from stnrepro.results.csv_rows import CsvValue, claims_csv_rows, csv_rows
from stnrepro.results.digits import DigitTable
from stnrepro.results.digits_plot import render_digit_plot
from stnrepro.results.layout import (
    EXTRA_TITLE,
    PAPER_DATASET,
    SHORT_CAPTIONS,
    Column,
    MeanStd,
    Range,
    Section,
    Signed,
    Value,
    sections,
    tex_escape,
)
from stnrepro.results.model import GROUP_PAPER, GROUP_PRIOR, TableData, TableError
from stnrepro.utils.atomic import temp_path

# The bird table (Table 3) or the digit table (Table 1): every renderer takes either.
AnyTable = TableData | DigitTable

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
    caption=lambda text: SHORT_CAPTIONS.get(text, text),
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
    if isinstance(value, Range):
        d, sign = value.digits, "+" if value.signed else ""
        lo, hi = (round(v, d) + 0.0 for v in (value.lo, value.hi))
        text = f"[{lo:{sign}.{d}f}, {hi:{sign}.{d}f}]"
        return style.signed(text) if value.signed else text
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


def _sections(table: AnyTable, attention: bool | None) -> list[Section]:
    if isinstance(table, DigitTable):
        return digits_layout.sections(table)
    return sections(table, attention)


def _render(table: AnyTable, style: _Style, attention: bool | None) -> str:
    out: list[str] = []
    for i, section in enumerate(_sections(table, attention)):
        out += style.heading(section.title, i)
        out += [style.note + line for line in section.notes]
        if any(group.rows for group in section.groups):
            out += [*style.gap, _table(section, style)]
        else:
            out += [*style.gap, style.remark + section.empty]
    return "\n".join(out) + "\n"


def render_markdown(table: AnyTable, attention: bool | None = None) -> str:
    """Markdown: ``#`` title, notes as a list, pipe tables (``attention``: see ``sections``)."""
    return _render(table, MARKDOWN, attention)


def render_latex(table: AnyTable, attention: bool | None = None) -> str:
    """booktabs ``tabular``s to ``\\input``; titles and notes go in ``%`` comments."""
    return _render(table, LATEX, attention)


def render_terminal(table: AnyTable, attention: bool | None = None) -> str:
    """Plain text for a terminal; short headers (units in them) to fit 80 columns."""
    return _render(table, TERMINAL, attention)


def print_table(table: AnyTable, attention: bool | None = None) -> None:
    """Show the table in the terminal, with the same notes as the files."""
    print(render_terminal(table, attention), end="")


# --------------------------------------------------------------------------- CSV


def _csv_value(value: CsvValue) -> str:
    if value is None:
        return ""
    if isinstance(value, str | int):
        return str(value)
    return f"{value + 0.0:.4f}"


def render_csv(table: AnyTable, attention: bool | None = None) -> str:
    """Machine-readable rows (columns: ``layout.CSV_FIELDS``); floats with 4 decimals."""
    return _write_csv(*csv_rows(table, attention))


def render_claims_csv(table: AnyTable) -> str:
    """The claims, one line each (columns: ``layout.CLAIM_FIELDS``); floats with 4 decimals."""
    return _write_csv(*claims_csv_rows(table))


def _write_csv(header: tuple[str, ...], rows: list[list[CsvValue]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([_csv_value(v) for v in row] for row in rows)
    return buf.getvalue()


# --------------------------------------------------------------------------- plot


def render_plot(table: AnyTable, path: str | os.PathLike[str]) -> None:
    """PNG, two panels: each cell's runs and 95% interval; each claim's difference.

    Panel 1 shows every seed's value as a dot and the cell's 95% interval as an error bar
    (mean ± std as a bar when there is no interval); the paper's number is a marker only when
    the runs are on the paper's dataset, so a synthetic accuracy never stands next to the
    CUB one as if comparable. Panel 2 (when the table has claims) shows each claim's paired
    difference with its interval beside the paper's difference, around a zero line. Legends
    sit below the axes, so they hide no label. The digit table (Table 1) has its own plot
    (``stnrepro.results.digits_plot``).
    """
    if isinstance(table, DigitTable):
        render_digit_plot(table, path)
        return
    # Figure + Agg canvas directly: no pyplot, so no global backend state is touched.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in table.rows if r.group != GROUP_PRIOR]
    claims = list(table.claims or ())
    width = max(7.0, 1.2 * len(rows) + 2.5)
    fig = Figure(figsize=(width, 5.0 + (0.35 * len(claims) + 2.0 if claims else 0.0)), dpi=100)
    FigureCanvasAgg(fig)
    if claims:
        ax, ax2 = fig.subplots(2, 1, height_ratios=[5.0, 0.35 * len(claims) + 1.5])
    else:
        ax, ax2 = fig.subplots(1, 1), None
    _plot_cells(ax, table, rows)
    if ax2 is not None:
        _plot_claims(ax2, table, claims)
    fig.tight_layout()
    # No "Software" metadata: the PNG then depends on the records (and matplotlib) only.
    fig.savefig(path, format="png", metadata={"Software": None})


def _plot_or_refuse(table: AnyTable, path: Path, name: str) -> None:
    """:func:`render_plot`, with values matplotlib cannot lay out as the table's one line."""
    try:
        render_plot(table, path)
    except (ValueError, OverflowError) as exc:
        values = (
            [v for c in table.cells for v in c.values]
            if isinstance(table, DigitTable)
            else [v for r in table.rows if r.stats is not None for v in r.stats.values]
        )
        extent = f" (values from {min(values):.4g} to {max(values):.4g})" if values else ""
        raise TableError(
            f"{name}: cannot plot the {table.metric} values{extent}: {one_line(exc)}; "
            "nothing was written"
        ) from None


def _annotate(ax: Any, text: str, xy: tuple[float, float], color: str) -> None:
    ax.annotate(
        text, xy, ha="left", va="center", fontsize=7, color=color,
        xytext=(6, 0), textcoords="offset points",
    )  # fmt: skip


def _plot_cells(ax: Any, table: TableData, rows: list) -> None:
    show_paper = table.compare_to_paper and table.dataset == PAPER_DATASET
    shown: list[float] = []
    xs = list(range(len(rows)))
    for x, row in zip(xs, rows, strict=True):
        stats = row.stats
        if stats is not None and stats.values:
            ax.scatter([x - 0.1] * stats.n, stats.values, s=14, color="tab:blue", zorder=3)
            mean = stats.mean
            if stats.interval is not None:
                lo, hi = stats.interval
            else:
                lo = hi = mean
                if stats.std is not None:
                    lo, hi = mean - stats.std, mean + stats.std
            ax.errorbar(  # an interval never sits wholly off its mean, but rounding might
                [x + 0.05], [mean], yerr=[[max(0.0, mean - lo)], [max(0.0, hi - mean)]],
                fmt="_", markersize=10,
                capsize=4, color="black" if stats.interval is not None else "tab:gray",
            )  # fmt: skip
            _annotate(ax, f"{mean:.{table.digits}f}\nn={stats.n}", (x + 0.05, mean), "black")
            shown += [*stats.values, lo, hi]
        if show_paper and row.paper_value is not None:
            ax.scatter([x - 0.3], [row.paper_value], marker="D", s=22, color="tab:orange")
            ax.annotate(
                f"{row.paper_value:.1f}", (x - 0.3, row.paper_value), ha="center",
                va="bottom", fontsize=7, color="tab:orange", xytext=(0, 4),
                textcoords="offset points",
            )  # fmt: skip
            shown.append(row.paper_value)
    if shown:  # zoom in, with room for the labels: differences of ~1 pp vanish on 0-100
        low, high = min(shown), max(shown)
        pad = max(0.15 * (high - low), 0.5 if table.percent else 0.01)
        ax.set_ylim(low - pad, high + 2 * pad)
    ax.set_xlim(-0.7, len(rows) - 0.2)
    ax.set_xticks(xs, [r.label.replace(" (paper:", "\n(paper:") for r in rows], fontsize=7)
    ax.set_ylabel(f"{table.metric}{' (%)' if table.percent else ''}")
    title = f"{table.dataset} / {table.backbone}: ours"
    if show_paper:
        title += f" vs. {table.paper_source}"
    elif table.compare_to_paper:
        title += f" (the paper's {PAPER_DATASET} numbers are not shown: other dataset)"
    ax.set_title(title, fontsize=9)
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color="tab:blue", marker="o", linestyle="", label="ours, one dot per seed"),
        Line2D([], [], color="black", marker="_", label="ours: mean and 95% CI"),
        Line2D([], [], color="tab:gray", marker="_", label="ours: mean ± std (no predictions)"),
    ]
    if show_paper:
        handles.append(
            Line2D([], [], color="tab:orange", marker="D", linestyle="", label="paper (1 run)")
        )
    ax.legend(
        handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16),
        ncol=len(handles), frameon=False,
    )  # fmt: skip
    n_paper = sum(r.group == GROUP_PAPER for r in rows)
    if n_paper < len(rows):
        ax.axvline(n_paper - 0.5, color="black", linestyle=":", linewidth=0.8)
        ax.text(
            n_paper - 0.45, 1.0, EXTRA_TITLE, transform=ax.get_xaxis_transform(), ha="left",
            va="top", fontsize=7, style="italic",
        )  # fmt: skip


def _plot_claims(ax: Any, table: TableData, claims: list) -> None:
    ys = list(range(len(claims)))[::-1]
    for y, claim in zip(ys, claims, strict=True):
        if claim.delta is not None:
            err = None
            if claim.lo is not None and claim.hi is not None:
                err = [[claim.delta - claim.lo], [claim.hi - claim.delta]]
            ax.errorbar(
                [claim.delta], [y + 0.12], xerr=err, fmt="o", markersize=4, capsize=3,
                color="tab:blue",
            )  # fmt: skip
            verdict = claim.verdict or "no predictions"
            _annotate(
                ax,
                f"{claim.delta:+.1f} ({verdict})",
                (claim.hi or claim.delta, y + 0.12),
                "tab:blue",
            )
        if claim.paper_delta is not None:
            ax.scatter([claim.paper_delta], [y - 0.18], marker="D", s=18, color="tab:orange")
            _annotate(ax, f"{claim.paper_delta:+.1f}", (claim.paper_delta, y - 0.18), "tab:orange")
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_yticks(ys, [c.label for c in claims], fontsize=7)
    ax.set_ylim(-0.7, len(claims) - 0.3)
    low, high = ax.get_xlim()
    ax.set_xlim(low, high + 0.35 * (high - low))  # room for the labels right of the points
    ax.set_xlabel("difference (pp), paired on the same test images, 95% CI", fontsize=8)
    ax.set_title("Claims: ours (blue) beside the paper's difference (orange)", fontsize=9)


# --------------------------------------------------------------------------- output


def default_table_name(table: AnyTable) -> str:
    """``<dataset>_table``, made safe for a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", table.dataset).strip("._") + "_table"


def _check_name(name: str) -> None:
    if not name or name.startswith(".") or re.search(r"[/\\\x00]", name):
        raise TableError(f"--name {name!r}: expected a plain file stem (no '/', not hidden)")


def write_table(table: AnyTable, out_dir: str | os.PathLike[str], name: str) -> list[Path]:
    """Write ``<name>.md/.csv/.tex/.png`` and ``<name>_claims.csv`` to ``out_dir``
    all-or-nothing (temp files, renames).

    Everything is rendered into hidden temp files first; only when all five exist are
    they renamed into place, so a failure leaves no half-written table behind.
    """
    _check_name(name)
    out = Path(out_dir)
    texts = {
        ".md": render_markdown(table),
        ".csv": render_csv(table),
        ".tex": render_latex(table),
        "_claims.csv": render_claims_csv(table),
    }
    missing = [p for p in (out, *out.parents) if not p.exists()]
    temps: dict[str, Path] = {}
    try:
        out.mkdir(parents=True, exist_ok=True)
        for suffix in (*texts, ".png"):
            # Plain files in the folder (their mode is open()'s, readable by others); all
            # of them are renamed into place only once every one is written.
            tmp = temps[suffix] = temp_path(out / f"{name}{suffix}")
            if suffix == ".png":
                _plot_or_refuse(table, tmp, f"{name}{suffix}")
            else:
                tmp.write_text(texts[suffix], encoding="utf-8", newline="\n")
    except BaseException as exc:
        for tmp in temps.values():
            with contextlib.suppress(OSError):  # a read-only folder: never created
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
        os.replace(tmp, final)
        paths.append(final)
    return paths
