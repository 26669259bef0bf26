"""The digit table's (Table 1) PNG: test error per distortion and model, and the claims.

Panel 1: one group of points per distortion, one colour per model; every seed's error as a
dot, the cell's 95% interval (mean ± std when there are no predictions) as a bar, and on
MNIST only the paper's error as an open diamond beside it (never beside another dataset's
numbers). Panel 2 (when there are claims): each ST's error minus its baseline's, paired,
with its interval, beside the paper's difference, around a zero line: left of 0 (lower
error) is better. No pyplot: a Figure with an Agg canvas, so no global state is touched.
"""

from __future__ import annotations

import os
from typing import Any

from stnrepro.results.digits import DigitTable


def render_digit_plot(table: DigitTable, path: str | os.PathLike[str]) -> None:
    """Write the PNG (see the module docstring); depends on the records only."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    claims = list(table.claims or ())
    width = max(7.0, 0.35 * len(table.models) * len(table.distortions) + 3.0)
    height = 5.0 + (0.3 * len(claims) + 2.0 if claims else 0.0)
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    if claims:
        ax, ax2 = fig.subplots(2, 1, height_ratios=[5.0, 0.3 * len(claims) + 1.5])
    else:
        ax, ax2 = fig.subplots(1, 1), None
    _plot_cells(ax, table)
    if ax2 is not None:
        _plot_claims(ax2, table, claims)
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})


def _plot_cells(ax: Any, table: DigitTable) -> None:
    colours = [f"C{i % 10}" for i in range(len(table.models))]
    step = 0.8 / max(1, len(table.models))
    for x, distortion in enumerate(table.distortions):
        for k, model in enumerate(table.models):
            cell = table.cell(model, distortion)
            if cell is None:
                continue
            at = x - 0.4 + step * (k + 0.5)
            colour = colours[k]
            if cell.values:
                ax.scatter([at] * cell.n, cell.values, s=10, color=colour, zorder=3)
                mean = cell.mean
                assert mean is not None  # the cell has values
                lo, hi = cell.interval if cell.interval is not None else (mean, mean)
                if cell.interval is None and cell.std is not None:
                    lo, hi = mean - cell.std, mean + cell.std
                ax.errorbar(
                    [at], [mean], yerr=[[max(0.0, mean - lo)], [max(0.0, hi - mean)]],
                    fmt="_", markersize=8, capsize=3, color=colour,
                )  # fmt: skip
            if table.compare_to_paper and cell.paper_value is not None:
                ax.scatter(
                    [at], [cell.paper_value], marker="D", s=22, facecolors="none",
                    edgecolors=colour, zorder=4,
                )  # fmt: skip
    ax.set_xticks(range(len(table.distortions)), list(table.distortions), fontsize=8)
    ax.set_xlim(-0.6, len(table.distortions) - 0.4)
    unit = " (%)" if table.error else ""
    ax.set_ylabel(("test error" if table.error else table.metric) + unit + ", lower is better")
    title = f"{table.dataset}: ours"
    if table.compare_to_paper:
        title += f" (dots, bars) vs. {table.paper_source} (open diamonds)"
    else:
        title += " (the paper has no numbers for this dataset)"
    ax.set_title(title, fontsize=9)
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color=c, marker="o", linestyle="", label=m)
        for c, m in zip(colours, table.models, strict=True)
    ]
    ax.legend(
        handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1),
        ncol=min(len(handles), 6), frameon=False,
    )  # fmt: skip


def _plot_claims(ax: Any, table: DigitTable, claims: list) -> None:
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
        if claim.paper_delta is not None:
            ax.scatter([claim.paper_delta], [y - 0.18], marker="D", s=18, color="tab:orange")
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_yticks(ys, [c.label for c in claims], fontsize=7)
    ax.set_ylim(-0.7, len(claims) - 0.3)
    ax.set_xlabel("error(ST) - error(baseline), pp, paired, 95% CI: below 0 is better", fontsize=8)
    who = "ours (blue) beside the paper's (orange)" if table.compare_to_paper else "ours"
    ax.set_title(f"Claims: {who}", fontsize=9)
