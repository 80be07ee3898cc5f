"""The layers of DESIGN.md are checked by `make lint` (import-linter): a lower layer that
imports a higher one — even lazily, inside a function — fails the check."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

BASE_DIR = Path(settings.BASE_DIR)
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=root, capture_output=True, text=True, check=False
    )


def copy_of_the_code(tmp_path: Path) -> Path:
    shutil.copytree(
        BASE_DIR / "apps", tmp_path / "apps", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(BASE_DIR / "pyproject.toml", tmp_path)
    return tmp_path


def test_the_code_as_it_is_keeps_every_layer():
    checked = lint_imports(BASE_DIR)
    assert checked.returncode == 0, checked.stdout
    assert "0 broken" in checked.stdout


@pytest.mark.parametrize(
    ("module", "added", "broken"),
    [
        (  # the gateway reaching up into a door, lazily, inside a function
            "apps/gateway/services.py",
            "\n\ndef upward() -> None:\n    from apps.chat import models  # noqa\n",
            "apps.gateway is not allowed to import apps.chat",
        ),
        (
            "apps/backends/balancer.py",
            "\nfrom apps.gateway import queues  # noqa\n",
            "apps.backends is not allowed to import apps.gateway",
        ),
        (  # queues is imported by services: importing it back makes a cycle
            "apps/gateway/queues.py",
            "\nfrom apps.gateway import services  # noqa\n",
            "No cycles are allowed in apps.gateway",
        ),
    ],
)
def test_an_upward_import_or_a_cycle_fails_the_check(tmp_path, module, added, broken):
    root = copy_of_the_code(tmp_path)
    with (root / module).open("a") as source:
        source.write(added)
    checked = lint_imports(root)
    assert checked.returncode != 0
    assert broken in checked.stdout
