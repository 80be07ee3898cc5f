"""The proving suite (``make chaos``): figures each check reports, printed at the end of
the run and written to ``test-output/chaos-figures.json`` (docs/reliability.md quotes
them)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import OUTPUT_DIR

FIGURES: dict[str, dict[str, Any]] = {}


def record(section: str, **figures: Any) -> None:
    FIGURES.setdefault(section, {}).update(figures)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/chaos/" in item.nodeid:
            item.add_marker(pytest.mark.chaos)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("chaos figures")
    for section, figures in FIGURES.items():
        terminalreporter.write_line(f"{section}:")
        for name, value in figures.items():
            terminalreporter.write_line(f"  {name}: {value}")
    OUTPUT_DIR.mkdir(exist_ok=True)
    (OUTPUT_DIR / "chaos-figures.json").write_text(json.dumps(FIGURES, indent=2) + "\n")
