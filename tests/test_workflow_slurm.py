"""The default workflow through the Snakemake Slurm executor, on a real single-node Slurm cluster.

The cluster is the one ``.ci/setup-slurm.sh`` starts (CI runs it before the
tests). If it is installed but not running, this module starts it as root and
stops it afterwards; where Slurm is not installed or cannot start, the test
skips and says why.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")
pytest.importorskip("snakemake_executor_plugin_slurm")

from conftest import ROOT, wait_until  # noqa: E402
from test_workflow import (  # noqa: E402
    STORE,
    assert_nothing_left,
    copy_workflow,
    object_f1,
    run_snakemake,
    stop_processes_in,
)

pytestmark = pytest.mark.slow

SETUP = ROOT / ".ci" / "setup-slurm.sh"


def cluster_answers() -> bool:
    return subprocess.run(["bash", str(SETUP), "status"], capture_output=True, timeout=60, check=False).returncode == 0


@pytest.fixture(scope="module")
def slurm_cluster():
    """A running single-node cluster; started (and stopped) here only if installed but not running."""
    if cluster_answers():
        yield
        return
    if shutil.which("sbatch") is None or shutil.which("slurmctld") is None:
        pytest.skip("Slurm is not installed here (no sbatch/slurmctld); `sudo bash .ci/setup-slurm.sh` installs it")
    if os.geteuid() != 0:
        pytest.skip("Slurm is installed but not running, and starting its daemons needs root")
    started = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=300, check=False)
    if started.returncode != 0:
        pytest.skip(f"the Slurm cluster could not start: {started.stderr.strip()[-500:]}")
    try:
        yield
    finally:
        subprocess.run(["bash", str(SETUP), "stop"], capture_output=True, timeout=120, check=False)


def queued_jobs() -> set[str]:
    """Ids of the jobs in the Slurm queue."""
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=30, check=False)
    return set(out.stdout.split())


def cluster_gpus() -> bool:
    """Whether the node offers GPUs (setup-slurm.sh adds two fake ones where mknod is allowed)."""
    out = subprocess.run(["sinfo", "-h", "-o", "%G"], capture_output=True, text=True, timeout=30, check=False)
    return "gpu" in out.stdout


def job_tres(jobid: str) -> str:
    """The trackable resources Slurm allocated to a (recent) job."""
    out = subprocess.run(["scontrol", "show", "job", jobid], capture_output=True, text=True, timeout=30, check=False)
    return " ".join(word for word in out.stdout.split() if word.startswith(("TRES=", "AllocTRES=", "TresPerJob=")))


def serving_job(lines: list[str], step: str) -> str:
    """The group job whose server serves ``step``: the one whose batch script targets that server's job."""
    for line in lines:
        jobid = re.search(r"SLURM jobid (\d+)", line).group(1)
        script = subprocess.run(
            ["scontrol", "write", "batch_script", jobid, "-"], capture_output=True, text=True, timeout=30, check=False
        )
        if f"serve_model:step={step}," in script.stdout:
            return jobid
    raise AssertionError(f"no group job serves {step}: {lines}")


def test_default_workflow_runs_through_the_slurm_executor(slurm_cluster, tmp_path):
    gpus = cluster_gpus()
    # where the node has (fake) GPUs, the segmentation server asks for one, as a deep model's would
    workdir = copy_workflow(
        tmp_path / "wf",
        {
            "models": {
                "threshold": {"resources": {"threads": 1, "mem_mb": 2000, "runtime": 30, "gpu": 1 if gpus else 0}}
            }
        },
    )
    before = queued_jobs()
    try:
        result = run_snakemake(
            workdir,
            "--workflow-profile",
            "profiles/slurm",
            "--slurm-no-account",
            "--slurm-init-seconds-before-status-checks",
            "5",
            "--latency-wait",
            "60",
        )
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
        wait_until(lambda: not queued_jobs() - before, timeout=60, what="the jobs of the run to leave the queue")
        assert_nothing_left(workdir)
    finally:
        mine = sorted(queued_jobs() - before)
        if mine:
            subprocess.run(["scancel", *mine], capture_output=True, timeout=30, check=False)
        stop_processes_in(workdir)

    # one sbatch per group job (a server with its consumers), and one per other cluster job
    out = result.stdout + result.stderr
    submitted = [line for line in out.splitlines() if "has been submitted with SLURM jobid" in line]
    groups = [line for line in submitted if "group_nahual_" in line]
    assert len(groups) == 3, submitted  # servers of nuclei, tracks, features
    assert any("rule_segment_stitch" in line for line in submitted)
    assert any("rule_report_figures" in line for line in submitted)
    if gpus:  # requested by the segmentation server's group job only (TresPerJob=gres:gpu:1)
        segmentation = job_tres(serving_job(groups, "nuclei"))
        assert re.search(r"gres[/:]gpu[=:]1\b", segmentation), segmentation
        assert "gpu" not in job_tres(serving_job(groups, "tracks"))
    # the run recorded its executor, so that a later run never clears its lock (rules/lock.smk)
    record = json.loads((workdir / ".snakemake" / "nahual-run.json").read_text())
    assert record["executor"] == "slurm" and record["local"] is False

    group = zarr.open_group(workdir / STORE, mode="r")
    truth, nuclei = group["labels/ground_truth/0"][...], group["labels/nuclei/0"][...]
    assert np.mean([object_f1(t, p) for t, p in zip(truth, nuclei)]) >= 0.9
    assert "tracks" in group["tracks"] and "features" in group["tables"]
    for name in ("outlines", "tracks", "summary"):
        assert (workdir / "results" / "demo" / "report" / f"{name}.png").stat().st_size > 10_000
    for log in ("serve_model/nuclei/demo/0.log", "model_apply/demo/nuclei/shard0-of-2.log"):
        assert (workdir / "logs" / log).exists(), log
    assert (workdir / "results" / "demo" / "tracks.done").exists()
