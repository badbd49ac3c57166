"""Resume: a run SIGKILLed at random points, started again, writes exactly what an uninterrupted run writes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")

from conftest import subprocess_env, wait_until  # noqa: E402
from stream_models import Blobs  # noqa: E402
from test_stream_stitch import blobs  # noqa: E402

from nahual.errors import ConfigError  # noqa: E402
from nahual.stream import LocalModel, StreamOptions, apply, write_image  # noqa: E402
from nahual.stream._resume import RunState  # noqa: E402

TILE = ["--tile", "y=64,x=64", "--halo", "16"]


def apply_command(path, name: str, *extra: str, delay: float = 0.0) -> list[str]:
    """``nahual apply`` of the Blobs model in its own process."""
    params = json.dumps({"delay_s": delay})
    return [
        sys.executable,
        "-m",
        "nahual",
        "apply",
        str(path),
        name,
        "--local",
        "--model",
        "stream_models:Blobs",
        "--params",
        params,
        "--quiet",
        *TILE,
        *extra,
    ]


def labels_of(path, name):
    return zarr.open_group(f"{path}/labels/{name}", mode="r")["0"][...]


@pytest.fixture
def image(tmp_path):
    return write_image(tmp_path / "img.zarr", blobs((3, 192, 192), 64, seed=5), "tyx", chunks=(1, 64, 64))


@pytest.fixture
def reference(image):
    with LocalModel(Blobs, {"delay_s": 0.03}) as model:
        apply(model, image, "reference", StreamOptions(tile="y=64,x=64", halo=16), progress=False)
    return labels_of(image, "reference")


def kill_when(process: subprocess.Popen, ready) -> bool:
    """SIGKILL ``process`` (by pid) once ``ready()`` holds; False when it finished first."""
    wait_until(lambda: ready() or process.poll() is not None, timeout=60, what="the kill point")
    if process.poll() is not None:
        return False
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return True


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume(image, reference):
    state = RunState(str(image), "seg")
    total = 3 * 9
    rng = random.Random(7)
    kill_points = [*sorted(rng.sample(range(1, total), 2)), total]  # the last one lands while stitching
    kills = 0
    for point in kill_points:
        process = subprocess.Popen(
            apply_command(image, "seg", delay=0.03),
            env=subprocess_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        kills += kill_when(process, lambda p=point: len(state.finished()) >= p)
    assert kills >= 2, "the runs finished before they could be killed"
    done = subprocess.run(apply_command(image, "seg", delay=0.03), env=subprocess_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert np.array_equal(labels_of(image, "seg"), reference)
    assert state.final() is not None and not os.path.exists(state.path)


def test_resume_skips_finished_blocks(image, reference):
    with LocalModel(Blobs) as model:
        first = apply(model, image, "seg", StreamOptions(tile="y=64,x=64", halo=16, shard="0/2"), progress=False)
        assert first["final"] is None and first["processed"] == 14
        second = apply(model, image, "seg", StreamOptions(tile="y=64,x=64", halo=16), progress=False)
    assert second["processed"] == 13 and second["skipped"] == 14
    assert np.array_equal(labels_of(image, "seg"), reference)


def test_a_different_run_cannot_reuse_an_output(image):
    with LocalModel(Blobs) as model:
        apply(model, image, "seg", StreamOptions(tile="y=64,x=64", halo=16, shard="0/3"), progress=False)
        with pytest.raises(ConfigError, match=r"different run \(plan differ\)"):
            apply(model, image, "seg", StreamOptions(tile="y=128,x=128", halo=16), progress=False)
    with (
        LocalModel(Blobs, {"threshold": 0.7}) as other,
        pytest.raises(ConfigError, match=r"different run \(params differ\)"),
    ):
        apply(other, image, "seg", StreamOptions(tile="y=64,x=64", halo=16), progress=False)
