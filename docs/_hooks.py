"""mkdocs hooks: keep the strict build independent of pages other work streams add later.

Pages listed in ``OPTIONAL`` (and the benchmark plot) may not exist yet: a missing page is
dropped from the nav and links to it become plain text; a missing image becomes a note on
how to make it.  Everything else stays strict.
"""

from __future__ import annotations

import os
import re
from typing import Any

OPTIONAL = ("durable-jobs.md", "worker-cli.md", "benchmarks.md")
_PLOT = re.compile(r"!\[([^\]]*)\]\((img/[^)]+)\)")
_MAKERS = {"tuning_curve.png": "tuning_curve.py", "fan_in_sweep.png": "plot.py"}


def _exists(config: Any, relative: str) -> bool:
    return os.path.exists(os.path.join(config["docs_dir"], relative))


def _prune(nav: list[Any], config: Any) -> list[Any]:
    kept: list[Any] = []
    for item in nav:
        if isinstance(item, dict):
            ((title, target),) = item.items()
            if isinstance(target, list):
                target = _prune(target, config)
            elif target in OPTIONAL and not _exists(config, target):
                continue
            kept.append({title: target})
        else:
            kept.append(item)
    return kept


def on_config(config: Any) -> Any:
    config["nav"] = _prune(config["nav"], config)
    return config


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    for name in OPTIONAL:
        if not _exists(config, name):
            markdown = re.sub(rf"\[([^\]]+)\]\({re.escape(name)}(#[^)]*)?\)", r"\1", markdown)

    def plot(match: re.Match[str]) -> str:
        if _exists(config, match.group(2)):
            return match.group(0)
        script = _MAKERS.get(os.path.basename(match.group(2)), "plot.py")
        return f"*(The plot `{match.group(2)}` is made by `python benchmarks/{script}`.)*"

    return _PLOT.sub(plot, markdown)
