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
    output = _run("bulk_http_api.py", "-W", "error::ResourceWarning")
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


needs_httpx = pytest.mark.skipif(
    importlib.util.find_spec("httpx") is None, reason="httpx is not installed: pip install -e '.[examples]'"
)
needs_fastapi = pytest.mark.skipif(
    importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("httpx") is None,
    reason="fastapi is not installed: pip install -e '.[examples]'",
)


@needs_httpx
def test_async_http_client_sends_one_request_per_batch_and_closes_everything() -> None:
    output = _run("async_http_client.py", "-W", "error::ResourceWarning")
    assert "490 priced, 10 unknown" in output, output
    requests = int(re.search(r"^500 lookups in (\d+) HTTP requests", output, re.MULTILINE)[1])  # type: ignore[index]
    assert requests <= 30, output  # batches of up to 100, plus the retried ones
    retried = re.search(r"^[1-9]\d* requests answered 503 \([1-9]\d* lookups retried\)", output, re.MULTILINE)
    assert retried, output


@needs_fastapi
def test_fastapi_app_example_runs() -> None:
    output = _run("fastapi_app.py", "-W", "error::ResourceWarning")
    assert "200 requests: 196 priced (200), 4 unknown (404)" in output, output


@needs_fastapi
@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")  # older Starlette
def test_fastapi_lifespan_starts_the_batcher_and_shuts_it_down_gracefully(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.syspath_prepend(str(EXAMPLES))
    from async_http_client import price, stand_in_api
    from fastapi.testclient import TestClient
    from fastapi_app import create_app

    from microbatching import State

    app = create_app()
    with stand_in_api() as url:
        monkeypatch.setenv("PRICE_API_URL", url)
        with TestClient(app) as client:
            batcher = app.state.prices
            assert batcher.state is State.RUNNING  # started in the lifespan, before any request
            with ThreadPoolExecutor(16) as pool:
                responses = list(pool.map(lambda n: client.get(f"/prices/SKU-{n}"), range(64)))
            assert [r.json() for r in responses] == [
                {"sku": f"SKU-{n}", "price": price(f"SKU-{n}")} for n in range(64)
            ]
            missing = client.get("/prices/X-1")
            assert missing.status_code == 404 and missing.json() == {"detail": "no price for X-1"}
        assert batcher.state is State.CLOSED  # shut down when the app stopped
    stats = batcher.stats()
    assert stats.submitted == 65 and stats.completed == 64 and stats.failed == 1 and stats.pending == 0
    assert stats.batches < 65  # concurrent requests shared bulk calls
