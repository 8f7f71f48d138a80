"""Shared test plumbing: a counter of property-based cases, reported at the end of the run."""

from collections import Counter

CASES: Counter = Counter()


def pytest_terminal_summary(terminalreporter):
    if CASES:
        terminalreporter.section("property-based cases tried")
        for name, n in sorted(CASES.items()):
            terminalreporter.write_line(f"{name}: {n} cases")
