"""docs/security.md, "Guarantees and their tests": every test the table names exists.

The table is the map from each promise of the security document to the tests
that prove it; a renamed or deleted test would leave a promise without proof
and nobody would notice. So every ``tests/FILE.py::NAME`` in the table must be
a file that defines NAME at its top level (a test function or class), and
every row must name at least one.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
DOC = PROJECT / "docs" / "security.md"
SECTION = "## Guarantees and their tests"
REFERENCE = re.compile(r"`(tests/[\w/.-]+\.py)::(\w+)`")


def _table_rows(text: str) -> list[str]:
    """The body rows of the table in the section, group headings (``| **X** | |``) left out."""
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    section = text[start : end if end != -1 else len(text)]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    body = rows[2:]  # the header and the |---| line
    return [row for row in body if not re.fullmatch(r"\| \*\*[^|]*\*\*[^|]* \| *\|", row)]


def _top_level_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return {node.name for node in tree.body if isinstance(node, kinds)}


def _missing(references: list[tuple[str, str]]) -> list[str]:
    missing = []
    names_by_file: dict[str, set[str] | None] = {}
    for file, name in references:
        if file not in names_by_file:
            path = PROJECT / file
            names_by_file[file] = _top_level_names(path) if path.is_file() else None
        names = names_by_file[file]
        if names is None:
            missing.append(f"{file}: no such file")
        elif name not in names:
            missing.append(f"{file}::{name}: no such test")
    return missing


def test_every_test_the_guarantees_table_names_exists():
    rows = _table_rows(DOC.read_text())
    assert len(rows) >= 50, f"the table in {SECTION!r} has {len(rows)} rows; was it cut?"
    without = [row for row in rows if not REFERENCE.search(row)]
    assert without == [], "rows that name no test:\n" + "\n".join(without)
    references = [match.groups() for row in rows for match in REFERENCE.finditer(row)]
    assert _missing(references) == []


def test_the_check_finds_a_renamed_test_and_a_missing_file():
    """A control: the check is not satisfied by anything."""
    assert _missing([("tests/test_security_doc.py", "test_every_test_the_guarantees_table_names_exists")]) == []
    assert _missing([("tests/test_security_doc.py", "test_renamed_away")]) == [
        "tests/test_security_doc.py::test_renamed_away: no such test"
    ]
    assert _missing([("tests/no_such_file.py", "test_x")]) == ["tests/no_such_file.py: no such file"]
    rows = _table_rows(f"{SECTION}\n\n| a | b |\n|---|---|\n| **Group** | |\n| promise | `x` |\n\n## Next\n| c | d |\n")
    assert rows == ["| promise | `x` |"]
