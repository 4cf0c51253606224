"""The README's quick start is two command lines, and CI runs the same test command."""

import pathlib
import re
import subprocess

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [line.strip() for line in section.splitlines() if line.startswith("    ") and line.strip()]


def test_quick_start_is_exactly_install_and_demo_then_install_tests_and_run_them() -> None:
    demo, tests = _quick_start_commands()
    assert demo == "python -m pip install . && python -m microbatching demo"
    assert re.fullmatch(r"python -m pip install '\.\[test\]' && python -m pytest", tests)


def test_ci_runs_the_readme_test_command() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    extract = re.search(r"test_command=\$\((.*)\)\n", script)
    assert extract is not None
    found = subprocess.run(
        ["bash", "-c", extract.group(1)], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert found == _quick_start_commands()[1]
    assert 'bash -c "$test_command"' in script
    assert "MICROBATCHING_REQUIRE_SERVICES=1" in script
