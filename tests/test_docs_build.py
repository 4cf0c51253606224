"""The documentation site builds with ``mkdocs build --strict`` (needs the ``docs`` extra).

The site is built once per session; the tests then read the built pages as a reader
would get them: the API reference must be complete and free of unrendered reST, and no
page may need anything from another host to look right.
"""

from __future__ import annotations

import html
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

needs_mkdocs = pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None,
    reason="mkdocs and mkdocstrings are not installed: pip install -e '.[docs]'",
)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out_dir = tmp_path_factory.mktemp("docs") / "site"
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=55,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return out_dir


def _text(page: Path) -> str:
    """What a reader sees of a page: its HTML without tags and with entities decoded."""
    markup = page.read_text()
    markup = re.sub(r"<(script|style)\b.*?</\1>", " ", markup, flags=re.DOTALL)
    return html.unescape(re.sub(r"<[^>]+>", "", markup))


@needs_mkdocs
def test_mkdocs_build_strict(site: Path) -> None:
    assert (site / "observability" / "index.html").exists()
    assert "MicroBatching" in (site / "api" / "index.html").read_text()


@needs_mkdocs
def test_api_reference_renders_the_docstrings_roles_as_links_not_as_text(site: Path) -> None:
    page = site / "api" / "index.html"
    text = _text(page)
    leftovers = re.findall(r":(?:py:)?(?:class|meth|func|mod|attr|data|exc|obj):`?", text)
    assert leftovers == [], f"unrendered Sphinx roles on the API page: {sorted(set(leftovers))}"
    markup = page.read_text()
    assert "<autoref " not in markup  # every reference was resolved (or turned into code)
    # a role in MicroBatching's docstring became a link to JobResult's entry
    assert re.search(r'<a [^>]*href="#microbatching\.JobResult"[^>]*><code>JobResult</code></a>', markup)


@needs_mkdocs
def test_api_reference_shows_constructor_options_and_no_private_base(site: Path) -> None:
    text = _text(site / "api" / "index.html")
    assert "BatcherBase" not in text
    assert "max_batch_weight" in text  # the batchers' options, in their signatures
    assert "RetryPolicy(" in text
    assert "_random" not in text  # RetryPolicy's private test hook stays out of its signature


@needs_mkdocs
def test_api_reference_covers_queues_their_interface_testing_errors_and_exporters(site: Path) -> None:
    text = _text(site / "api" / "index.html")
    for name in (
        "SQLiteQueue",
        "ClaimQueue",
        "Lease",
        "QueueCapabilities",
        "QueueStats",
        "DeadLetter",
        "QueueConformance",
        "make_queue",
        "JobFailedError",
        "PayloadTooLargeError",
        "start_metrics_server",
        "OtelInstrumentation",
    ):
        assert name in text, f"{name} is missing from the API reference"
    assert "test_add_and_deliver" not in text  # the conformance cases themselves are not API


_EXTERNAL = re.compile(
    r"<(?:script|link|img)\b[^>]*\b(?:src|href)=[\"']?(?:https?:)?//[^\"'\s>]+", re.IGNORECASE
)


@needs_mkdocs
def test_pages_load_nothing_from_another_host(site: Path) -> None:
    pages = sorted(site.rglob("*.html"))
    assert len(pages) > 10
    for page in pages:
        found = _EXTERNAL.findall(page.read_text())
        assert found == [], f"{page.relative_to(site)} loads {found}"
    for sheet in site.rglob("*.css"):
        assert not re.search(r"@import\s+url\(\s*[\"']?(?:https?:)?//", sheet.read_text()), sheet


@needs_mkdocs
def test_code_blocks_are_highlighted_at_build_time(site: Path) -> None:
    page = (site / "getting-started" / "index.html").read_text()
    assert '<div class="language-python highlight">' in page
    assert '<span class="kn">import</span>' in page  # Pygments tokens, styled by a local sheet
    assert 'href="../css/pygments.css"' in page
    assert (site / "css" / "pygments.css").read_text().count(".highlight") > 20


def test_choosing_settings_opens_with_the_tuning_curve() -> None:
    page = (ROOT / "docs" / "choosing-settings.md").read_text()
    opening = page.split("\n## ", 1)[0]
    images = re.findall(r"!\[[^\]]*\]\((img/[^)]+)\)", opening)
    assert images == ["img/tuning_curve.png"]  # a tuning curve, not a comparison with other code
    assert (ROOT / "docs" / "img" / "tuning_curve.png").stat().st_size > 10_000
    assert "benchmarks/tuning_curve.py" in opening and (ROOT / "benchmarks" / "tuning_curve.py").exists()


def test_every_page_is_in_the_nav() -> None:
    config = (ROOT / "mkdocs.yml").read_text()
    for page in sorted((ROOT / "docs").rglob("*.md")):
        path = page.relative_to(ROOT / "docs").as_posix()
        assert f": {path}" in config, f"{path} is not in mkdocs.yml's nav"
