"""Each program in examples/ runs (in a subprocess, in its short ``--quick`` mode)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _run(name: str, *flags: str) -> str:
    """Run ``examples/name --quick`` (with these interpreter ``flags``); its output.

    Whatever it writes to stderr fails the test: an example is read and copied, so it must
    run clean, and a warning raised while an object is collected (an unclosed socket, say)
    only ever shows there: the interpreter prints it and exits 0.
    """
    out = subprocess.run(
        [sys.executable, *flags, str(EXAMPLES / name), "--quick"], capture_output=True, text=True, timeout=55
    )
    assert out.returncode == 0, f"{name} failed:\n{out.stdout}\n{out.stderr[-3000:]}"
    assert out.stderr == "", f"{name} wrote to stderr:\n{out.stderr[-3000:]}"
    return out.stdout


def test_sqlite_inserts_from_an_asyncio_service() -> None:
    output = _run("sqlite_inserts.py")
    assert "500 requests: 490 stored, 10 rejected; 490 rows in the table" in output
    assert "transactions, batch size p50" in output


def test_bulk_http_api_with_a_local_stand_in_closes_every_connection() -> None:
    output = _run("bulk_http_api.py", "-W", "error::ResourceWarning", "-X", "tracemalloc=5")
    assert "200 lookups in" in output and "195 found, 5 not found" in output
    assert re.search(r"^[1-9]\d* requests answered 503", output, re.MULTILINE), output  # errors closed too


@pytest.mark.skipif(
    importlib.util.find_spec("numpy") is None,
    reason="numpy is not installed: pip install -e '.[examples]'",
)
def test_model_inference_behind_the_decorator_is_faster_than_one_pass_per_request() -> None:
    output = _run("model_inference.py")
    assert "200 concurrent requests" in output and "same predictions" in output
    passes = dict(re.findall(r"^(one by one|batched): +(\d+) forward passes", output, re.MULTILINE))
    assert passes == {"one by one": "200", "batched": passes["batched"]}, output
    assert int(passes["batched"]) <= 20, output  # batches of up to 64, not one pass per request
    # What the example is for: the fixed cost per pass (1 ms, 200 of them one by one) is paid
    # a few times instead; it prints about 20x here.  1.5x leaves room for any loaded machine.
    speedup = float(re.search(r"^speedup: ([\d.]+)x", output, re.MULTILINE)[1])  # type: ignore[index]
    assert speedup > 1.5, output
