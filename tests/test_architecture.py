"""The package's shape: no import circle, queues and adapters apart from the engine's insides."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "microbatching"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports at import time (not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for child in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
            if isinstance(child, ast.ImportFrom) and child.level:
                base = package.rsplit(".", child.level - 1)[0] if child.level > 1 else package
                target = f"{base}.{child.module}" if child.module else base
                found.add(target)
            elif isinstance(child, ast.ImportFrom) and (child.module or "").startswith("microbatching"):
                found.add(child.module or "")
    return {target for target in found if target.startswith("microbatching")}


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        # "from .x import y" may name a module y of package x: count the module it lands in.
        graph[name] = {target for target in _runtime_imports(path) if target in modules and target != name}
    return graph


def _find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (as a path ending where it starts), or None."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path[path.index(target):], target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_circle_finder_finds_one() -> None:
    assert _find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _find_circle({"a": {"b"}, "b": set()}) is None


def test_the_import_graph_has_no_circle() -> None:
    assert _find_circle(_graph()) is None


def test_queues_and_adapters_never_import_the_engine() -> None:
    graph = _graph()
    offenders = {
        name: sorted(t for t in targets if t.startswith("microbatching._engine"))
        for name, targets in graph.items()
        if name.startswith(("microbatching.queues", "microbatching.adapters"))
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_queues_and_adapters_read_no_private_attribute_of_the_engine() -> None:
    reads = []
    for directory in ("queues", "adapters"):
        for path in (PACKAGE / directory).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.Attribute) or not node.attr.startswith("_"):
                    continue
                owner = ast.unparse(node.value)
                if owner == "engine" or owner.endswith(".engine"):
                    reads.append(f"{path.name}:{node.lineno}: {owner}.{node.attr}")
    assert reads == []


def test_no_exact_type_test_picks_an_adapter() -> None:
    found = [
        f"{path.relative_to(PACKAGE)}:{number}"
        for path in PACKAGE.rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "type(adapter) is" in line or "type(self._adapter) is" in line
    ]
    assert found == []


def test_the_architecture_picture_is_drawn_from_the_current_code() -> None:
    import subprocess
    import sys

    script = PACKAGE.parent.parent / "tools" / "architecture.py"
    result = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
