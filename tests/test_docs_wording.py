"""The docs, the README, the examples and the benchmarks speak in the project's own terms.

They describe the library and its figures to a user: no references to work items ("issue
4"), to test-suite labels ("fault test (a)") or to pass/fail marks a reader cannot place
("[MISS]"); the benchmark verdicts say "meets the goal" or "below the goal".  And they
install the way the README's quick start does, from the checkout: the package is not on an
index yet, so ``pip install microbatching`` would fail.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FILES = sorted(
    [
        ROOT / "README.md",
        *(ROOT / "docs").rglob("*.md"),
        *(ROOT / "docs").glob("*.py"),
        *(ROOT / "benchmarks").glob("*.py"),
        *(ROOT / "examples").glob("*.py"),
    ]
)
FORBIDDEN = {
    "a work item": re.compile(r"\bissues?[ -]?#?\d+", re.IGNORECASE),
    "a pass/fail mark": re.compile(r"\[(?:MISS|FAIL|PASS)\]"),
    "a test's label": re.compile(r"\bfault tests? \(", re.IGNORECASE),
    "a target": re.compile(r"\btargets?\s*(?:[<>]=?|==)\s*[\d.+-]|\btargets\b", re.IGNORECASE),
    "an install from an index": re.compile(r"pip install\s+['\"]?microbatching\b"),
}


def _hits(text: str) -> list[str]:
    found = []
    for what, pattern in FORBIDDEN.items():
        for match in pattern.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append(f"line {line}: {what}: {match.group(0)!r}")
    return found


def test_the_patterns_catch_what_they_are_for() -> None:
    assert len(_hits("the workloads of issue 4\n== issue-4 targets ==\n[MISS] bulk (target >= 0.6x)")) == 5
    assert _hits("(the fault test (a) measures)") and _hits("pip install microbatching")
    assert not _hits("meets the goal: bulk (goal >= 0.6x)\nthreading.Thread(target=run)")
    assert not _hits("python -m pip install '.[prometheus]'")


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(ROOT)) for p in FILES])
def test_no_work_items_labels_or_marks(path: Path) -> None:
    assert _hits(path.read_text()) == []
