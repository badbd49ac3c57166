"""A server that dies at start fails ``nahual.launch`` within seconds, with the server's own error first.

The causes are the ones users meet: bad params, a model that cannot be
imported, a missing weight file, and a model whose failure leaves the
interpreter hanging on its way out (a thread that never ends). Each must
raise a LaunchError whose first line (what the CLI prints) ends with the
model's message, well before the 60 s startup deadline.
"""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest
from conftest import alive

from nahual.errors import LaunchError
from nahual.launcher import launch

#: Seconds a failed start may take to be reported (the startup deadline is 60 s).
FAST = 5.0

MODELS = textwrap.dedent(
    """
    import threading, time
    from nahual import Contract, Model, Param

    class NeedsWeights(Model):
        name = "needs-weights"
        contract = Contract(output="labels")
        param_spec = (Param("weights", "model.pt", "weight file"),)

        def load(self, **params):
            super().load(**params)
            raise FileNotFoundError(f"weight file {self.params['weights']!r} not found; download it first")

    class HangsOnExit(NeedsWeights):
        name = "hangs-on-exit"

        def load(self, **params):
            threading.Thread(target=time.sleep, args=(600,), name="never-ends").start()  # not a daemon
            super().load(**params)
    """
)


@pytest.fixture(autouse=True)
def runtime(short_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private runtime directory, and a models module the servers can import."""
    (tmp_path / "failing_models.py").write_text(MODELS)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("NAHUAL_RUNTIME_DIR", str(short_dir / "rt"))
    monkeypatch.delenv("NAHUAL_TOKEN", raising=False)
    return short_dir / "rt"


def failed_launch(**kwargs: object) -> tuple[str, float]:
    """The LaunchError's first line and how long launch took to raise it."""
    started = time.monotonic()
    with pytest.raises(LaunchError) as caught:
        launch("current", timeout=60, **kwargs)  # type: ignore[arg-type]
    return str(caught.value).splitlines()[0], time.monotonic() - started


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"preload": "echo", "params": {"delay_s": -1}}, "echo: param 'delay_s' expects float >= 0, got -1 (int)"),
        ({"preload": "echo", "params": {"dleay_s": 1}}, "echo: unknown param 'dleay_s'"),
        ({"preload": "no_such_package_xyz.models:Cells"}, "No module named 'no_such_package_xyz'"),
        (
            {"preload": "failing_models:NeedsWeights"},
            "FileNotFoundError: weight file 'model.pt' not found; download it first",
        ),
    ],
    ids=["param-range", "param-typo", "import-error", "missing-weight"],
)
def test_a_server_that_dies_at_start_reports_its_own_error(kwargs: dict, message: str, runtime: Path) -> None:
    first, took = failed_launch(**kwargs)
    assert took < FAST, f"took {took:.1f} s: {first}"
    assert "exited with status 1 before it was ready: " in first
    assert message in first
    assert "nahual serve: error:" not in first  # the cause itself, not the CLI's prefix
    assert not [p for p in runtime.glob("*") if p.suffix in (".sock", ".ready")]


def test_a_server_that_reports_its_error_and_hangs_is_stopped_at_once(runtime: Path) -> None:
    first, took = failed_launch(preload="failing_models:HangsOnExit")
    assert took < FAST, f"took {took:.1f} s: {first}"
    assert "failed before it was ready and did not exit within 1 s: " in first
    assert "weight file 'model.pt' not found" in first
    pid = int(first.split("(pid ", 1)[1].split(")")[0])
    assert not alive(pid)
