"""The ``trackastra`` model through a real server in the CPU build of its environment (``envs/trackastra``).

The weights are small model folders this module writes inside that
environment (``tests/trackastra_weights.py``) and adds to a weights cache of
its own (``$NAHUAL_WEIGHTS``): a hand-set toy model that links exactly the
objects closer than its spatial cutoff, so the lineage it gives is known, and
a random one. The environment must have been prepared (``.ci/install`` does
it once per CI run); the module skips, saying how, where it was not.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from served_models import ServedModelTests, cpu_environment, cpu_spec, cuda_environment_lock
from trackastra_weights import DEMO_CUTOFF

import nahual
import nahual.errors
from nahual.catalog import envs_dir
from nahual.lineage import NODE_ID_STRIDE
from nahual.models.trackastra import MODEL_FILES, Trackastra
from nahual.weights import add, fetch

pytestmark = pytest.mark.slow

SPEC = cpu_spec("trackastra")
#: Loading imports torch and trackastra (seconds on a loaded 2-core machine).
LIMITS = nahual.Timeout(connect=10.0, request=180.0, startup=120.0)
#: Load params of the toy model: one torch thread, as every test on 2 cores.
TOY = {"model": "toy", "threads": 1}


def write_weights(kind: str, folder: Path, cutoff: float = 12.0) -> Path:
    """A ``toy`` or ``random`` Trackastra model folder, written by the environment's own Python."""
    python = cpu_environment("trackastra").python()[0]
    script = Path(__file__).with_name("trackastra_weights.py")
    argv = [python, str(script), kind, str(folder), "--cutoff", str(cutoff)]
    subprocess.run(argv, check=True, capture_output=True, timeout=300)
    return folder


def division_series() -> tuple[np.ndarray, np.ndarray]:
    """Image and labels (5, 128, 128): four disks (r=7) moving (+2, +3) px a frame; disk 1 divides at t=3.

    The daughters appear 8 px above and below where the mother would be: 10.4 px
    from her at most, while every other pair of consecutive objects is more than
    14 px apart, so the toy model with a 12 px cutoff links exactly the true pairs.
    """
    yy, xx = np.mgrid[:128, :128]
    labels = np.zeros((5, 128, 128), np.uint32)
    for t in range(5):
        label = 1
        for k, (y, x) in enumerate([(20, 20), (20, 80), (80, 20), (80, 80)]):
            for dy in (-8, 8) if k == 0 and t >= 3 else (0,):
                labels[t][(yy - y - 2 * t - dy) ** 2 + (xx - x - 3 * t) ** 2 <= 49] = label
                label += 1
    return (labels > 0).astype(np.float32) * 100 + 10, labels


def node(t: int, label: int) -> int:
    return t * NODE_ID_STRIDE + label


#: The lineage of :func:`division_series`: labels 1-4 at t <= 2, 1-5 after it (1 and 2 the daughters).
DIVISION_EDGES = sorted(
    [(node(t, k), node(t + 1, k)) for t in (0, 1) for k in (1, 2, 3, 4)]
    + [(node(2, 1), node(3, 1)), (node(2, 1), node(3, 2))]
    + [(node(2, k), node(3, k + 1)) for k in (2, 3, 4)]
    + [(node(3, k), node(4, k)) for k in (1, 2, 3, 4, 5)]
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Iterator[Path]:
    """A weights cache ($NAHUAL_WEIGHTS, also for the server) holding ``toy``, ``toy8`` and ``random``."""
    cpu_environment("trackastra")
    root = tmp_path_factory.mktemp("weights")
    made = tmp_path_factory.mktemp("made")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NAHUAL_WEIGHTS", str(root / "cache"))
        for name, kind, cutoff in (("toy", "toy", 12.0), ("toy8", "toy", DEMO_CUTOFF), ("random", "random", 12.0)):
            add("trackastra", name, write_weights(kind, made / name, cutoff))
        yield root / "cache"


@pytest.fixture(scope="module")
def server(cache) -> Iterator[nahual.ServerProcess]:
    with nahual.launch(SPEC, timeout=LIMITS) as started:
        yield started


@pytest.fixture(scope="module")
def client(server) -> Iterator[nahual.Client]:
    with server.client() as connected:
        yield connected


@pytest.fixture(scope="module")
def toy(client) -> nahual.ModelHandle:
    return client.load("trackastra", **TOY)


def pairs(out: dict) -> list[tuple[int, int]]:
    return sorted(zip(out["edges"]["source"].tolist(), out["edges"]["target"].tolist()))


@pytest.mark.parametrize("mode", ["greedy", "ilp"])
def test_the_toy_model_gives_the_exact_lineage_of_a_division(toy, mode):
    image, labels = division_series()
    out = toy({"image": image, "labels": labels, "axes": "tyx"}, mode=mode)
    nodes = out["nodes"]
    assert set(nodes) == {"id", "t", "label", "y", "x"} and len(nodes["id"]) == 22
    assert np.array_equal(nodes["id"], nodes["t"] * NODE_ID_STRIDE + nodes["label"])
    assert pairs(out) == DIVISION_EDGES
    tracks = {key: values.tolist() for key, values in out["tracks"].items()}
    # CTC style: the mother's track ends at the division, each daughter starts one whose parent it is
    assert tracks == {
        "track_id": [1, 2, 3, 4, 5, 6],
        "start": [0, 0, 0, 0, 3, 3],
        "end": [2, 4, 4, 4, 4, 4],
        "parent": [0, 0, 0, 0, 1, 1],
    }
    assert out["track_id"][nodes["id"] == node(4, 2)].tolist() == [6]


def test_greedy_nodiv_links_one_daughter_only(toy):
    image, labels = division_series()
    out = toy({"image": image, "labels": labels, "axes": "tyx"}, mode="greedy_nodiv")
    assert len(pairs(out)) == len(DIVISION_EDGES) - 1 and set(pairs(out)) < set(DIVISION_EDGES)
    assert out["tracks"]["parent"].tolist() == [0] * 5


def test_max_distance_drops_the_links_longer_than_it(toy):
    image, labels = division_series()
    out = toy({"image": image, "labels": labels, "axes": "tyx"}, max_distance=8.0)
    # the moves (3.6 px) and the upper daughter (6.7 px) stay, the lower one (10.4 px) goes
    assert set(pairs(out)) == set(DIVISION_EDGES) - {(node(2, 1), node(3, 2))}


def test_random_weights_load_from_the_cache_and_from_a_folder_path(client, cache):
    image, labels = division_series()
    for model in ("random", str(cache / "trackastra" / "random")):
        out = client.load("trackastra", model=model, threads=1)({"image": image, "labels": labels, "axes": "tyx"})
        # random weights are all below the greedy threshold: every object is a track of its own
        assert len(out["nodes"]["id"]) == 22 and pairs(out) == []
        assert out["tracks"]["track_id"].tolist() == list(range(1, 23))


def remote_error(client: nahual.Client, **params: Any) -> nahual.RemoteError:
    with pytest.raises(nahual.RemoteError) as caught:
        client.load("trackastra", threads=1, **params)
    return caught.value


def test_a_missing_weight_is_one_line_naming_the_fetch_command(client, cache):
    error = remote_error(client, model="general_2d")
    assert error.remote_type == "WeightsError" and "\n" not in error.remote_message
    assert str(cache / "trackastra" / "general_2d") in error.remote_message
    assert "nahual weights fetch trackastra general_2d" in error.remote_message


def test_the_releases_are_known_weights_unpacked_from_their_zips():
    assert set(Trackastra.weights) == {"general_2d", "ctc"}
    for name, source in Trackastra.weights.items():
        assert source.archive and source.url.endswith(f"/{name}.zip")


def test_a_release_zip_fetched_into_the_cache_loads_by_its_name(client, cache, tmp_path):
    # a release is a zip of one folder (ctc/config.yaml, ctc/model.pt, ...): fetch unpacks and unwraps it
    with zipfile.ZipFile(tmp_path / "ctc.zip", "w") as archive:
        for name in MODEL_FILES:
            archive.write(cache / "trackastra" / "toy" / name, f"ctc/{name}")
    source = dataclasses.replace(Trackastra.weights["ctc"], url=(tmp_path / "ctc.zip").as_uri())
    assert fetch("trackastra", "ctc", source, stream=io.StringIO()) == cache / "trackastra" / "ctc"
    image, labels = division_series()
    out = client.load("trackastra", model="ctc", threads=1)({"image": image, "labels": labels, "axes": "tyx"})
    assert pairs(out) == DIVISION_EDGES


def test_a_folder_without_its_checkpoint_is_one_line(client, cache, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    for name in ("config.yaml", "train_config.yaml"):
        (folder / name).write_bytes((cache / "trackastra" / "toy" / name).read_bytes())
    error = remote_error(client, model=str(folder))
    assert error.remote_type == "WeightsError" and "\n" not in error.remote_message
    assert error.remote_message == f"trackastra model folder {folder} lacks model.pt (it needs {MODEL_FILES})"


def test_a_gpu_that_is_not_there_is_one_line_at_load(client):
    error = remote_error(client, model="toy", device="cuda:0")
    assert error.remote_type == "ConfigError" and "\n" not in error.remote_message
    assert error.remote_message == (
        "trackastra: device 'cuda:0' asked for, but torch 2.13.0+cpu (a CPU build) sees no CUDA device"
    )


def test_3d_frames_for_a_2d_model_are_a_contract_error(toy):
    labels = np.zeros((3, 4, 16, 16), np.uint32)
    with pytest.raises(nahual.RemoteError, match="tracks 2-d objects, got 3-d frames"):
        toy({"image": labels.astype(np.float32), "labels": labels, "axes": "tzyx"})


def test_the_demo_lineage_is_found_exactly_through_the_stream_and_exported_to_ctc(client, tmp_path):
    pytest.importorskip("zarr")
    from nahual.demo import make_demo, write_demo
    from nahual.stream import StreamOptions, apply, export_ctc, read_tracks

    truth = make_demo(seed=0)
    store = write_demo(tmp_path / "demo.zarr", truth)
    handle = client.load("trackastra", model="toy8", threads=1)
    apply(handle, store / "labels" / "ground_truth", "lineage", StreamOptions(), progress=False)
    nodes, edges, _ = read_tracks(store, "lineage")
    # the tracker saw the two-channel image (tcyx, its channel 0) and the truth's labels
    assert sorted(map(tuple, edges.tolist())) == sorted(
        zip(truth.edges["source"].tolist(), truth.edges["target"].tolist())
    )
    assert sorted(nodes["id"].tolist()) == sorted(truth.nodes["id"].tolist())
    written = export_ctc(store, tmp_path / "ctc", "lineage")
    rows = np.loadtxt(tmp_path / "ctc" / "res_track.txt", dtype=np.int64).reshape(-1, 4)
    assert written["tracks"] == len(truth.tracks["track_id"]) == len(rows)
    assert sorted(rows[:, 3] > 0) == sorted(truth.tracks["parent"] > 0)


def test_importing_trackastra_leaves_the_process_environment_and_root_logger_alone(cache):
    code = (
        "import logging, os, json\n"
        "from nahual.models.trackastra import Trackastra\n"
        "Trackastra().load(model='toy', threads=1)\n"
        "root = logging.getLogger()\n"
        "print(json.dumps([root.level, len(root.handlers), os.environ.get('KMP_DUPLICATE_LIB_OK')]))\n"
    )
    clean = {key: value for key, value in os.environ.items() if key != "KMP_DUPLICATE_LIB_OK"}  # as set by others
    python = cpu_environment("trackastra").python()[0]
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300, check=True, env=clean)
    assert json.loads(done.stdout.splitlines()[-1]) == [30, 0, None]  # WARNING, no handler, unset
    assert "INFO" not in done.stderr


class TestTrackastra(ServedModelTests):
    model_class = Trackastra
    load_params = TOY

    def make_payload(self) -> dict:
        image, labels = division_series()
        return {"image": image, "labels": labels, "axes": "tyx"}


def test_the_model_is_registered_and_in_the_catalog_with_a_cuda_environment():
    from nahual.catalog import default_env

    assert default_env("trackastra") == f"uv:{envs_dir() / 'trackastra'}"
    assert 'name = "torchvision"' not in cuda_environment_lock("trackastra")
