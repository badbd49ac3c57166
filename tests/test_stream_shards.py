"""Shards: N shards, one after the other or in parallel processes, give what one run gives."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")

from conftest import subprocess_env  # noqa: E402
from stream_models import Blobs  # noqa: E402
from test_stream_resume import apply_command, labels_of  # noqa: E402
from test_stream_stitch import blobs  # noqa: E402

from nahual.errors import ConfigError  # noqa: E402
from nahual.stream import LocalModel, StreamOptions, apply, finish, write_image  # noqa: E402


@pytest.fixture
def image(tmp_path):
    return write_image(tmp_path / "img.zarr", blobs((2, 192, 192), 64, seed=6), "tyx", chunks=(1, 64, 64))


@pytest.fixture
def single(image):
    with LocalModel(Blobs) as model:
        apply(model, image, "single", StreamOptions(tile="y=64,x=64", halo=16), progress=False)
    return labels_of(image, "single")


def test_shards_one_after_the_other(image, single):
    with LocalModel(Blobs) as model:
        results = [
            apply(model, image, "seg", StreamOptions(tile="y=64,x=64", halo=16, shard=f"{i}/3"), progress=False)
            for i in range(3)
        ]
    assert [r["processed"] for r in results] == [6, 6, 6] and all(r["final"] is None for r in results)
    finish(image, "seg")
    assert np.array_equal(labels_of(image, "seg"), single)


def test_finish_refuses_missing_shards(image):
    with LocalModel(Blobs) as model:
        apply(model, image, "seg", StreamOptions(tile="y=64,x=64", halo=16, shard="1/4"), progress=False)
    with pytest.raises(ConfigError, match="13 of 18 blocks of 'seg' are not finished"):
        finish(image, "seg")


@pytest.mark.slow
def test_shards_in_parallel_processes(image, single):
    processes = [
        subprocess.Popen(
            apply_command(image, "seg", "--shard", f"{i}/3"),
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(3)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], outputs
    stitch = subprocess.run(
        [sys.executable, "-m", "nahual", "stitch", str(image), "seg"],
        env=subprocess_env(),
        capture_output=True,
        text=True,
    )
    assert stitch.returncode == 0, stitch.stderr
    assert np.array_equal(labels_of(image, "seg"), single)
