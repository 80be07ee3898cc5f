"""The layers of DESIGN.md are checked by `make lint` (import-linter): a lower layer that
imports a higher one — even lazily, inside a function — fails the check."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

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


def test_the_gateway_importing_chat_lazily_breaks_the_layers(tmp_path):
    root = copy_of_the_code(tmp_path)
    with (root / "apps/gateway/services.py").open("a") as module:
        module.write("\n\ndef upward() -> None:\n    from apps.chat import models  # noqa\n")
    checked = lint_imports(root)
    assert checked.returncode != 0
    assert "apps.gateway is not allowed to import apps.chat" in checked.stdout


def test_backends_importing_the_gateway_breaks_the_layers(tmp_path):
    root = copy_of_the_code(tmp_path)
    with (root / "apps/backends/balancer.py").open("a") as module:
        module.write("\nfrom apps.gateway import queues  # noqa\n")
    checked = lint_imports(root)
    assert checked.returncode != 0
    assert "apps.backends is not allowed to import apps.gateway" in checked.stdout


def test_a_cycle_inside_an_app_breaks_the_check(tmp_path):
    root = copy_of_the_code(tmp_path)
    with (root / "apps/gateway/queues.py").open("a") as module:
        module.write("\nfrom apps.gateway import services  # noqa\n")
    checked = lint_imports(root)
    assert checked.returncode != 0
    assert "No cycles are allowed in apps.gateway" in checked.stdout
