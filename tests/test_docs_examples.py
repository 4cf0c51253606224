"""Every ```python block of README.md and docs/*.md runs (each in a fresh interpreter).

Put ``<!-- skip-example: reason -->`` on the line right before a block that cannot run
here (it needs a broker, say); use it sparingly.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
_FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```\s*$", re.DOTALL | re.MULTILINE)
_SKIP = re.compile(r"<!--\s*skip-example:\s*(.*?)\s*-->\s*$")
TIMEOUT = 45


def _blocks() -> list[pytest.ParameterSet]:
    params = []
    for source in SOURCES:
        if not source.exists():
            continue
        text = source.read_text()
        for match in _FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
            skip = _SKIP.search(before)
            name = f"{source.relative_to(ROOT)}:{line}"
            marks = [pytest.mark.skip(reason=skip.group(1))] if skip else []
            params.append(pytest.param(match.group(1), id=name, marks=marks))
    return params


BLOCKS = _blocks()


def test_the_docs_have_examples() -> None:
    names = {p.id.split(":")[0] for p in BLOCKS}
    assert "README.md" in names
    assert {"docs/getting-started.md", "docs/observability.md"} <= names


@pytest.mark.parametrize("code", BLOCKS)
def test_example_runs(code: str, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(code)
    out = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert out.returncode == 0, f"the example failed:\n{code}\n--- stderr ---\n{out.stderr[-3000:]}"
