"""Draw docs/img/architecture.svg from the package's own import graph.

``python tools/architecture.py`` rewrites the picture; ``--check`` fails if it is out of
date (the test suite runs that).  Each module is placed in its layer by its path; every
arrow is a real import between layers, labelled with how many imports it stands for.
"""

from __future__ import annotations

import argparse
import ast
import sys
from html import escape
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "microbatching"
OUTPUT = ROOT / "docs" / "img" / "architecture.svg"

#: (layer, what it is, module-name prefixes), top to bottom: a layer imports only those below it.
LAYERS = [
    ("entry points", "what users call", ("_sync", "_async", "_decorator", "cli", "worker", "_worker", "_demo",
                                         "__main__", "metrics", "testing", "__init__")),
    ("batcher", "what both batchers share: admission, events", ("_base", "_events", "interfaces")),
    ("engine", "batching: one copy for both batchers", ("_engine",)),
    ("adapters", "how each kind of queue feeds the engine", ("adapters",)),
    ("queues", "where jobs wait: memory, SQLite, brokers", ("queues",)),
    ("values", "jobs, batches, options, stats, errors", ("_job", "_batch", "errors", "_options", "_retry",
                                                         "_validate", "_stats")),
]  # fmt: skip


def _layer(module: str) -> int:
    relative = module.removeprefix("microbatching").lstrip(".") or "__init__"
    for index, (_, _, prefixes) in enumerate(LAYERS):
        if relative.split(".")[0] in prefixes:
            return index
    raise ValueError(f"{module} belongs to no layer: add its prefix to LAYERS")


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for child in ast.walk(node):
            if isinstance(child, ast.ImportFrom) and child.level:
                base = package.rsplit(".", child.level - 1)[0] if child.level > 1 else package
                target = f"{base}.{child.module}" if child.module else base
                if target in modules and target != name:
                    targets.add(target)
    return targets


def layer_edges() -> tuple[dict[int, list[str]], dict[tuple[int, int], int]]:
    """Modules per layer, and the number of imports from each layer to each other one."""
    modules = _modules()
    members: dict[int, list[str]] = {index: [] for index in range(len(LAYERS))}
    edges: dict[tuple[int, int], int] = {}
    for name, path in modules.items():
        source = _layer(name)
        members[source].append(name if name == "microbatching" else name.removeprefix("microbatching."))
        for target in _imports(name, path, modules):
            key = (source, _layer(target))
            if key[0] != key[1]:
                edges[key] = edges.get(key, 0) + 1
    return members, edges


def render() -> str:
    members, edges = layer_edges()
    width, row, gap, left = 980, 92, 34, 210
    height = len(LAYERS) * (row + gap) + 20
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        '<defs><marker id="a" markerWidth="8" markerHeight="8" refX="7" refY="4" orient="auto">'
        '<path d="M0,0 L8,4 L0,8 z" fill="#555"/></marker></defs>',
        '<rect width="100%" height="100%" fill="white"/>',
    ]
    for index, (name, what, _) in enumerate(LAYERS):
        y = 10 + index * (row + gap)
        out.append(f'<rect x="{left}" y="{y}" width="{width - left - 10}" height="{row}" rx="8" '
                   'fill="#eef3fb" stroke="#4a6fa5"/>')  # fmt: skip
        out.append(f'<text x="{left + 10}" y="{y + 18}" font-weight="bold">{escape(name)}</text>')
        out.append(f'<text x="{left + 120}" y="{y + 18}" fill="#555">{escape(what)}</text>')
        for line, chunk in enumerate(_wrap(sorted(members[index]), 110)):
            out.append(f'<text x="{left + 10}" y="{y + 38 + line * 15}" font-family="monospace" '
                       f'font-size="11">{escape(chunk)}</text>')  # fmt: skip
    for lane, (source, target) in enumerate(sorted(edges)):
        x = left - 12 - lane * 6
        y1 = 10 + source * (row + gap) + row / 2 + (lane % 5) * 4
        y2 = 10 + target * (row + gap) + row / 2 - 10 + (lane % 5) * 4
        out.append(f'<path d="M{left},{y1:.0f} H{x} V{y2:.0f} H{left - 2}" fill="none" stroke="#777" '
                   'marker-end="url(#a)"/>')  # fmt: skip
    upward = [f"{LAYERS[s][0]} -> {LAYERS[t][0]}" for s, t in edges if t < s]
    note = "every arrow points down" if not upward else "UPWARD: " + ", ".join(upward)
    out.append(f'<text x="10" y="{height - 6}" fill="#555">imports between layers ({note})</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _wrap(names: list[str], limit: int) -> list[str]:
    lines, current = [], ""
    for name in names:
        if current and len(current) + len(name) + 2 > limit:
            lines.append(current)
            current = ""
        current = f"{current}  {name}" if current else name
    return [*lines, current] if current else lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the picture is out of date")
    args = parser.parse_args(argv)
    picture = render()
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text() != picture:
            print(f"{OUTPUT} is out of date: run python tools/architecture.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(picture)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
