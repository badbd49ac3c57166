"""The code follows the project's lint rules (``[tool.ruff]`` in pyproject.toml)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff comes with nahual[test]")
@pytest.mark.parametrize("check", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff_finds_nothing(check):
    result = subprocess.run(
        ["ruff", *check, "nahual", "tests", "benchmarks"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_core_imports_without_zarr_or_the_client():
    """``import nahual`` stays light: model environments need only numpy and pynng."""
    code = (
        "import sys, nahual; print(sorted(m for m in ('zarr', 'nahual.client', 'nahual.launcher') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.strip() == "[]"
