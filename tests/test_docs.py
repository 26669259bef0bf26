"""README and docs/ stay whole and true to the code.

README is the user's path; the reference lives in ``docs/*.md``. These tests keep the two
joined (every page is linked from README, every relative link and ``#anchor`` resolves)
and keep the tables that copy a code constant equal to it: the keys that do and do not
define a run (``stnrepro.records.definition``) and the table's CSV and claims columns
(``stnrepro.results.csv_rows``). A copied table sits between ``<!-- NAME:start -->`` and
``<!-- NAME:end -->`` markers; its first column holds the names, in the code's order.
Anchors follow GitHub's rule: the heading in lower case, punctuation other than ``-`` and
``_`` dropped, spaces as ``-``, ``-1``, ``-2`` ... for repeats.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from stnrepro.records.definition import ADDED_KEYS, DEFINING_AFTER_ALL, NOT_RUN_DEFINING
from stnrepro.results.csv_rows import CLAIM_COLUMNS, CSV_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]

_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)


def _prose(text: str) -> str:
    """``text`` without fenced code blocks (links and headings there are not Markdown)."""
    return _FENCE.sub("", text)


def _slug(heading: str) -> str:
    text = re.sub(r"`([^`]*)`", r"\1", heading)  # inline code keeps its text
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link keeps its text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The ``#anchors`` GitHub gives the headings of the Markdown file ``path``."""
    seen: dict[str, int] = {}
    found = set()
    for match in _HEADING.finditer(_prose(path.read_text())):
        slug = _slug(match.group(2))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def links(path: Path) -> list[str]:
    return _LINK.findall(_prose(path.read_text()))


def marked(path: Path, name: str) -> str:
    """The text between ``<!-- name:start -->`` and ``<!-- name:end -->`` in ``path``."""
    text = path.read_text()
    found = re.findall(rf"<!-- {name}:start -->\n(.*?)<!-- {name}:end -->", text, re.S)
    assert len(found) == 1, f"{path.name}: expected one <!-- {name}:start/end --> block"
    return found[0]


def table_rows(block: str) -> list[list[str]]:
    """The body rows of the one Markdown table in ``block``, as lists of stripped cells."""
    lines = [line.strip() for line in block.splitlines() if line.strip().startswith("|")]
    assert len(lines) >= 2 and set(lines[1]) <= set("|-: "), f"not a table:\n{block}"
    rows = []
    for line in lines[2:]:
        cells = re.split(r"(?<!\\)\|", line.strip("|"))
        rows.append([cell.strip() for cell in cells])
    return rows


def _code_name(cell: str) -> str:
    match = re.fullmatch(r"`([^`]+)`|([\w./{}-]+)", cell)
    assert match, f"expected one name (plain or `code`) in the first column, got {cell!r}"
    return match.group(1) or match.group(2)


# --------------------------------------------------------------------------- the pages


def test_every_docs_page_is_linked_from_readme():
    linked = {
        (README.parent / unquote(link.split("#")[0])).resolve()
        for link in links(README)
        if not re.match(r"[a-z]+:", link)
    }
    missing = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert not missing, f"docs pages that README does not link: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for link in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", link):  # https:, mailto: ...: not ours to check
            continue
        target, _, anchor = link.partition("#")
        path = (page.parent / unquote(target)).resolve() if target else page
        if not path.exists():
            broken.append(f"{link} (no file {path})")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{link} (no heading #{anchor} in {path.name})")
    assert not broken, f"{page.name}: broken links: {broken}"


def test_readme_is_the_users_path_not_the_reference():
    lines = README.read_text().count("\n")
    assert lines <= 350, f"README.md has {lines} lines; move reference text to docs/"


# --------------------------------------------------------------------------- copied tables


def test_the_not_run_defining_table_is_the_codes():
    rows = table_rows(marked(DOCS / "runs.md", "not-run-defining"))
    assert [(_code_name(key), why) for key, why in rows] == list(NOT_RUN_DEFINING.items())


def test_the_keys_that_define_a_run_after_all_are_the_codes():
    block = marked(DOCS / "runs.md", "defining-after-all")
    assert re.findall(r"^- `([^`]+)`", block, re.M) == list(DEFINING_AFTER_ALL)


def test_keys_added_to_the_definition_are_named():
    text = (DOCS / "runs.md").read_text()
    assert all(f"`{key}`" in text for key in ADDED_KEYS), list(ADDED_KEYS)


def test_the_csv_columns_are_the_codes():
    rows = table_rows(marked(DOCS / "table.md", "csv-columns"))
    assert [_code_name(row[0]) for row in rows] == list(CSV_COLUMNS)
    assert all(row[1] for row in rows), "every CSV column says what it means"


def test_the_claims_columns_are_the_codes():
    rows = table_rows(marked(DOCS / "table.md", "claims-columns"))
    assert [_code_name(row[0]) for row in rows] == list(CLAIM_COLUMNS)
    assert all(row[1] for row in rows), "every claims column says what it means"


# --------------------------------------------------------------------------- the checks


def test_the_anchor_rule_is_githubs():
    assert _slug("Interrupted runs, failures, bad input") == "interrupted-runs-failures-bad-input"
    assert _slug("The comparison table (`stn-table`)") == "the-comparison-table-stn-table"
    assert _slug("What is the paper's and what is ours") == "what-is-the-papers-and-what-is-ours"


def test_a_broken_link_or_a_drifted_table_is_caught(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n[here](#title) [gone](#nowhere) [file](missing.md)\n\n"
        "```\n[not a link](nope.md)\n```\n\n"
        "<!-- t:start -->\n| k | v |\n|---|---|\n| `a` | x \\| y |\n<!-- t:end -->\n"
    )
    assert links(page) == ["#title", "#nowhere", "missing.md"]
    assert anchors(page) == {"title"}
    assert table_rows(marked(page, "t")) == [["`a`", "x \\| y"]]
    with pytest.raises(AssertionError, match="expected one"):
        marked(page, "other")
