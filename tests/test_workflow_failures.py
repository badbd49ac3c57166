"""The workflow's failures, fast and plain (real ``snakemake --cores 2`` runs).

- a typo in a model's params stops the run when the config is read, in
  seconds, naming the key, before any job starts;
- a server that dies at start (params its model's load refuses, a package
  missing from its environment, a missing weights file: the test models of
  models_for_tests.py) fails its consumers within seconds, well before the
  profile's latency-wait, and the run ends with the server's own one-line error.
"""

from __future__ import annotations

import time

import pytest

pytest.importorskip("zarr")
pytest.importorskip("snakemake")

from conftest import subprocess_env
from test_workflow import assert_nothing_left, copy_workflow, run_snakemake, stop_processes_in

pytestmark = pytest.mark.slow

#: The profile's latency-wait (profiles/default): what a consumer of a server that never got ready waited.
LATENCY_WAIT = 60
#: A small demo, so that making it costs little.
SMALL_DEMO = {"path": "resources/demo.zarr", "frames": 2, "size": 128, "nuclei": 3}


def test_a_typo_in_params_stops_the_run_when_the_config_is_read(tmp_path):
    workdir = copy_workflow(tmp_path / "wf", {"models": {"threshold": {"params": {"sigmaa": 2}}}})
    started = time.monotonic()
    result = run_snakemake(workdir, "--cores", "2", timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert (
        "config error at models.threshold.params: threshold: unknown param 'sigmaa' (did you mean 'sigma'?)"
        in result.stdout + result.stderr
    )
    assert elapsed < 30, f"took {elapsed:.0f} s"
    assert not (workdir / "logs").exists() and not (workdir / "resources").exists()  # no job started


@pytest.mark.parametrize(
    ("model", "params", "cause"),
    [
        ("OddSize", {"size": 4}, "odd_size: size must be odd, got 4"),
        ("NeedsPackage", {}, "ModuleNotFoundError: No module named 'nahual_absent_package'"),
        ("NeedsWeights", {}, "FileNotFoundError: [Errno 2] No such file or directory: 'weights/needs_weights.bin'"),
    ],
    ids=["bad-params", "import-error", "missing-weights"],
)
def test_a_server_that_dies_at_start_fails_the_run_in_seconds_with_its_own_error(tmp_path, model, params, cause):
    overrides = {
        "models": {"failing": {"model": f"models_for_tests:{model}", "env": "current", "params": params}},
        "chain": [{"name": "seg", "model": "failing"}],
        "demo": SMALL_DEMO,
    }
    workdir = copy_workflow(tmp_path / "wf", overrides)
    started = time.monotonic()
    try:
        result = run_snakemake(workdir, "--cores", "2", timeout=300, env=subprocess_env())  # models_for_tests
    finally:
        stop_processes_in(workdir)
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert elapsed < LATENCY_WAIT * 0.75, f"took {elapsed:.0f} s:\n{output[-3000:]}"
    assert "Missing files after" not in output and "filesystem latency" not in output
    # a consumer failed with the server's message (the first to fail stops the others), and the last lines say it
    consumers = [log.read_text() for log in (workdir / "logs" / "model_apply" / "demo" / "seg").glob("*.log")]
    said = "nahual apply: error: the server of results/servers/seg/demo/0.ready failed to start: "
    assert any(said in text and cause in text for text in consumers), consumers
    last = output.strip().splitlines()[-6:]
    assert any(
        line.startswith("nahual: server of step seg, image demo, instance 0 failed: ") and cause in line
        for line in last
    ), "\n".join(last)
    assert_nothing_left(workdir)
