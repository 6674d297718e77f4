"""Prints one line with the BuildKit conformance counts at the end of the run."""

from __future__ import annotations

# test function -> what its cases are called in the summary
CATEGORIES = {
    "test_parser_testfile": "parser files",
    "test_negative_testfile": "negative files",
    "test_parser_testfile_full_parse": "parser files (full parse)",
    "test_env_var": "envVarTest lines",
    "test_words": "wordsTest cases",
}
_counts: dict[str, dict[str, int]] = {}


def pytest_runtest_logreport(report):
    if "tests/conformance/" not in report.nodeid.replace("\\", "/"):
        return
    function = report.nodeid.split("::")[-1].split("[")[0]
    category = CATEGORIES.get(function)
    if category is None:
        return
    counts = _counts.setdefault(category, {"passed": 0, "failed": 0, "skipped": 0})
    if report.when == "call":
        counts[report.outcome] += 1
    elif report.outcome != "passed":  # failed or skipped in setup/teardown
        counts["failed" if report.failed else "skipped"] += 1


def pytest_terminal_summary(terminalreporter):
    if not _counts:
        return
    parts = []
    for category in CATEGORIES.values():
        counts = _counts.get(category)
        if counts is None:
            continue
        text = f"{counts['passed']} {category} passed"
        if counts["failed"]:
            text += f", {counts['failed']} FAILED"
        if counts["skipped"]:
            text += f", {counts['skipped']} skipped"
        parts.append(text)
    terminalreporter.write_line("BuildKit conformance: " + "; ".join(parts))
