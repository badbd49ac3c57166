"""The ``baby`` model: its model-set checks and cell outputs here, and BABY itself through a real server.

The first part runs in the orchestrator (no TensorFlow): model sets refused
before BABY sees them (a pickle, a JSON naming a foreign class), the overlap
layers and lineage edges built from BABY's frames, and the ``cells`` output
written by ``nahual apply`` from an in-process stand-in with overlapping
cells. The rest needs the prepared ``envs/baby`` (``.ci/install`` prepares it:
``nahual env-prepare uv:envs/baby``) and skips, saying so, without it: one
server for the module (TensorFlow takes seconds to import), the model sets of
``tests/baby_env.py`` in a weights cache of its own, and proxies that lead
nowhere, so that a download would fail the tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from baby_env import budding_series
from conftest import TESTS
from served_models import ServedModel

import nahual
from nahual.catalog import envs_dir
from nahual.errors import WeightsError
from nahual.lineage import NODE_ID_STRIDE
from nahual.model import Contract, Model
from nahual.models._baby_cells import Frame, overlap_layers, series_result
from nahual.models._baby_sets import read_modelset
from nahual.models.baby import Baby
from nahual.testing import ModelTests
from nahual.weights import add

SPEC = f"uv:{envs_dir() / 'baby'}"
LIMITS = nahual.Timeout(connect=10.0, request=300.0, startup=180.0)
TINY = {"model": "tiny", "threads": 1}


def node(t: int, label: int) -> int:
    return t * NODE_ID_STRIDE + label


#: The lineage of budding_series(): cells 1 and 2 in every frame, bud 3 from frame 2, its mother 1.
BUDDING_EDGES = sorted(
    [(node(t, k), node(t + 1, k), "continuation") for k in (1, 2) for t in range(6)]
    + [(node(t, 3), node(t + 1, 3), "continuation") for t in range(2, 6)]
    + [(node(1, 1), node(2, 3), "budding")]
)


def edge_list(edges: dict[str, Any]) -> list[tuple[int, int, str]]:
    """(source, target, lineage name) of each edge, sorted."""
    names = [("continuation", "budding")[code] for code in edges["lineage"].tolist()]
    return sorted(zip(edges["source"].tolist(), edges["target"].tolist(), names))


# ---------------------------------------------------------------- without TensorFlow


def tiny_folder(tmp_path: Path, brain_params: dict[str, Any]) -> Path:
    """A model set folder with empty files for every name in ``brain_params``."""
    folder = tmp_path / "set"
    folder.mkdir()
    for key, name in brain_params.items():
        if key.endswith("_file") or key == "params":
            (folder / name).write_text("{}")
    (folder / "modelset.json").write_text(json.dumps({"name": "t", "brain_params": brain_params}))
    return folder


BRAIN_FILES = {
    "morph_model_file": "m.hdf5",
    "flattener_file": "f.json",
    "params": "p.json",
    "celltrack_model_file": "ct.pkl",
    "budassign_model_file": "ba.npz",
}


def test_a_pickled_tracker_is_never_loaded_only_its_npz_beside_it(tmp_path):
    folder = tiny_folder(tmp_path, BRAIN_FILES)
    with pytest.raises(WeightsError, match=r"ct.pkl is a pickle, which nahual never loads .* put BABY's .*ct.npz"):
        read_modelset(str(folder))
    (folder / "ct.npz").write_text("")
    files = read_modelset(str(folder)).files
    # the backup tracker, which the set does not name, is its main one (BABY would fetch its default set's)
    assert files["celltrack_model_file"] == files["celltrack_backup_model_file"] == folder / "ct.npz"


def test_files_resolve_in_the_set_then_in_shared_beside_it(tmp_path):
    folder = tiny_folder(tmp_path, {**BRAIN_FILES, "celltrack_model_file": "ct.npz"})
    (folder / "ct.npz").rename(tmp_path / "ct.npz")
    with pytest.raises(WeightsError, match=r"celltrack_model_file ct.npz is in neither .*; `nahual weights fetch baby"):
        read_modelset(str(folder))
    (tmp_path / "shared").mkdir()
    (tmp_path / "ct.npz").rename(tmp_path / "shared" / "ct.npz")
    assert read_modelset(str(folder)).files["celltrack_model_file"] == tmp_path / "shared" / "ct.npz"


def test_a_json_file_naming_a_foreign_class_is_refused_before_baby_reads_it(tmp_path):
    folder = tiny_folder(tmp_path, {**BRAIN_FILES, "celltrack_model_file": "ct.npz"})
    evil = {"_python_NamedTuple": {"args": ["touch", "x"]}, "__module__": "subprocess", "__class__": "Popen"}
    (folder / "p.json").write_text(json.dumps({"a": [evil]}))
    with pytest.raises(WeightsError, match=r"p.json names subprocess.Popen; a BABY file may only name BABY's own"):
        read_modelset(str(folder))


def test_a_missing_modelset_is_one_line_naming_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("NAHUAL_WEIGHTS", str(tmp_path))
    with pytest.raises(WeightsError) as caught:
        Baby().load(threads=1)
    message = str(caught.value)
    assert "\n" not in message and "nahual weights fetch baby yeast-alcatras-brightfield-EMCCD-60x-5z" in message


def test_the_released_sets_and_their_shared_trackers_are_known_weights():
    assert {"yeast-alcatras-brightfield-EMCCD-60x-5z", "shared"} <= set(Baby.weights)
    for name, source in Baby.weights.items():
        assert source.archive and source.filename.endswith(f"/{name}")


def disk(shape: tuple[int, int], y: float, x: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - y) ** 2 + (xx - x) ** 2 <= r * r


def test_overlapping_cells_go_to_separate_layers_each_whole():
    mother, bud, other = disk((40, 40), 15, 15, 10), disk((40, 40), 26, 15, 4), disk((40, 40), 5, 34, 3)
    layers = overlap_layers(np.stack([bud, mother, other]), np.array([7, 5, 9]))
    assert len(layers) == 2
    assert np.array_equal(layers[0] == 5, mother) and np.array_equal(layers[1] == 7, bud)
    assert np.array_equal(layers[0] == 9, other) and not (layers[1] == 9).any()


def frame(labels: list[int], masks: list[np.ndarray], mothers: list[int]) -> Frame:
    count = len(labels)
    return Frame(np.array(labels), np.array(masks, bool).reshape(count, 40, 40), np.ones(count),
                 np.ones((count, 2)), np.zeros(count), np.array(mothers))  # fmt: skip


def test_a_bud_is_joined_to_its_mothers_last_node_before_it_across_windows():
    mother, bud = disk((40, 40), 15, 15, 10), disk((40, 40), 26, 15, 4)
    first = series_result([frame([1], [mother], [0])], 0, (40, 40))
    assert edge_list(first["edges"]) == []
    earlier = (first["nodes"]["t"], first["nodes"]["label"])
    later = series_result([frame([1, 2], [mother, bud], [0, 1]), frame([1, 2], [mother, bud], [0, 1])], 1, (40, 40),
                          earlier)  # fmt: skip
    assert later["nodes"]["t"].tolist() == [1, 1, 2, 2] and later["nodes"]["mother"].tolist() == [0, 1, 0, 1]
    assert edge_list(later["edges"]) == [
        (node(0, 1), node(1, 1), "continuation"),
        (node(0, 1), node(1, 2), "budding"),
        (node(1, 1), node(2, 1), "continuation"),
        (node(1, 2), node(2, 2), "continuation"),
    ]
    assert later["layers"].shape == (2, 2, 40, 40) and later["table"]["mother"].tolist() == [0, 1, 0, 1]


class OverlapCells(Model):
    """A stand-in for BABY: in every frame a mother and, overlapping her, her bud."""

    name = "overlap-cells"
    contract = Contract(axes=("tyx",), inputs=("image",), output="cells", tiling=False)

    def process(self, payload: dict[str, Any], **params: Any) -> dict[str, Any]:
        image = np.asarray(payload["image"])
        mother, bud = disk(image.shape[1:], 15, 15, 10), disk(image.shape[1:], 24, 15, 4)
        return series_result([frame([1, 2], [mother, bud], [0, 1]) for _ in image], 0, image.shape[1:])


def test_the_cells_output_keeps_every_bud_whole_and_links_the_graph_to_its_labels(tmp_path):
    zarr = pytest.importorskip("zarr")
    from ome_zarr_models.v05 import Image, ImageLabel

    from nahual.stream import LocalModel, StreamOptions, apply, export_ctc, read_tracks, write_image

    store = write_image(tmp_path / "cells.zarr", np.zeros((3, 40, 40), np.float32), "tyx", scale=(1.0, 0.2, 0.2))
    with LocalModel(OverlapCells) as handle:
        apply(handle, store, "yeast", StreamOptions(), progress=False)
    group = zarr.open_group(store, mode="r")
    Image.from_zarr(group)
    assert {"yeast", "yeast-layer0", "yeast-layer1"} <= set(group["labels"].attrs["ome"]["labels"])
    mother, bud = disk((40, 40), 15, 15, 10), disk((40, 40), 24, 15, 4)
    for name, wanted in (("yeast", {1: mother & ~bud, 2: bud}), ("yeast-layer0", {1: mother}),
                         ("yeast-layer1", {2: bud})):  # fmt: skip
        ImageLabel.from_zarr(group[f"labels/{name}"])
        labels = group[f"labels/{name}/0"][...]
        assert labels.shape == (3, 40, 40) and labels.dtype == np.uint32
        for value, mask in wanted.items():
            assert np.array_equal(labels[1] == value, mask), (name, value)
    nodes, edges, meta = read_tracks(store, "yeast")
    assert meta["related_objects"][0]["path"] == "../../labels/yeast"
    assert nodes["seg_id"].tolist() == nodes["track_id"].tolist() == [1, 2, 1, 2, 1, 2]
    lineage = group["tracks/yeast/edges/props/lineage/values"][...].tolist()
    assert meta["extra"]["nahual"]["lineage"] == ["continuation", "budding"]
    assert sorted(zip(map(tuple, edges.tolist()), lineage)) == sorted(
        [((node(t, k), node(t + 1, k)), 0) for t in (0, 1) for k in (1, 2)]
    )  # the bud is there from frame 0: it has a mother but no earlier node to bud from
    import anndata

    table = anndata.io.read_elem(group["tables/yeast"])
    assert table.obs["mother"].tolist() == [0, 1] * 3 and "volume_um3" in table.var_names
    assert export_ctc(store, tmp_path / "ctc", "yeast") == {"frames": 3, "tracks": 2}


# ---------------------------------------------------------------- BABY itself


def environment() -> Path:
    """The prepared envs/baby interpreter, or a skip that says how to prepare it."""
    from nahual.launcher import parse_env_spec

    backend = parse_env_spec(SPEC)
    if not backend.is_synced():
        pytest.skip(f"the BABY environment is not prepared: run `nahual env-prepare {SPEC}` (.ci/install does)")
    return Path(backend.python()[0])


def made_modelsets(request: pytest.FixtureRequest) -> Path:
    """The model sets of tests/baby_env.py, made in envs/baby once per content of the helper (pytest's cache)."""
    script = TESTS / "baby_env.py"
    key = hashlib.sha256(script.read_bytes()).hexdigest()[:16]
    entry = request.config.cache.mkdir(f"nahual-test-baby-sets-{key}")
    if not (entry / "done").exists():
        subprocess.run([str(environment()), str(script), str(entry / "sets")], check=True, capture_output=True,
                       timeout=600)  # fmt: skip
        (entry / "done").touch()
    return entry / "sets"


@pytest.fixture(scope="module")
def cache(request, tmp_path_factory) -> Iterator[Path]:
    """A weights cache ($NAHUAL_WEIGHTS, also the server's) with tiny, random and lambda; no way to the internet."""
    environment()
    made = made_modelsets(request)
    root = tmp_path_factory.mktemp("weights")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NAHUAL_WEIGHTS", str(root))
        for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            patch.setenv(proxy, "http://127.0.0.1:9")  # the discard port: any download fails at once
        for name in ("NO_PROXY", "no_proxy"):
            patch.delenv(name, raising=False)
        for kind in ("tiny", "random", "lambda"):
            add("baby", kind, made / kind)
        yield root


@pytest.fixture(scope="module")
def client(cache) -> Iterator[nahual.Client]:
    with nahual.launch(SPEC, timeout=LIMITS) as server, server.client() as connected:
        yield connected


@pytest.fixture(scope="module")
def tiny(client) -> nahual.ModelHandle:
    return client.load("baby", **TINY)


@pytest.fixture(scope="module")
def whole(tiny) -> dict[str, Any]:
    return tiny({"image": budding_series(), "axes": "tzyx"})


def test_the_tiny_set_finds_two_cells_then_a_bud_and_assigns_it_to_its_mother(whole):
    nodes = whole["nodes"]
    assert nodes["t"].tolist() == [0, 0, 1, 1] + [t for t in range(2, 7) for _ in range(3)]
    assert nodes["label"].tolist() == [1, 2, 1, 2] + [1, 2, 3] * 5
    assert np.array_equal(nodes["id"], nodes["t"] * NODE_ID_STRIDE + nodes["label"])
    assert edge_list(whole["edges"]) == BUDDING_EDGES
    assert nodes["mother"].tolist() == [0, 0, 0, 0] + [0, 0, 1] * 5
    # BABY's masks are whole cells where the disks are; sizes in micrometres at the set's 0.263 um pixels
    layers = whole["layers"]
    assert layers.shape == (1, 7, 128, 128) and layers.dtype == np.uint32
    truth = disk((128, 128), 45, 46, 16)
    assert (np.logical_and(layers[0, 6] == 1, truth).sum() / np.logical_or(layers[0, 6] == 1, truth).sum()) > 0.85
    table = whole["table"]
    first = table["label"] == 1
    assert np.allclose(table["major_axis_um"][first], 2 * 16 * 0.263, rtol=0.1)
    assert np.all(table["volume_um3"][first] > 0) and whole["pixel_size"] == 0.263
    buds, lone = table["label"] == 3, table["label"] == 2
    assert table["bud_probability"][buds].min() > 0.5 > table["bud_probability"][lone].max()


def test_two_series_sent_in_windows_at_once_keep_their_own_crawlers(tiny, whole):
    # series b: the same cells mirrored left-right, so its centres differ from a's in every frame
    a, b = budding_series(), budding_series(seed=1)[..., ::-1].copy()
    expected_b = tiny({"image": b, "axes": "tzyx"})
    cuts = {"a": (0, 3, 7), "b": (0, 4, 7)}
    results: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}
    with ThreadPoolExecutor(2) as pool:
        for window in range(2):
            futures = {}
            for name, image in (("a", a), ("b", b)):
                start, stop = cuts[name][window], cuts[name][window + 1]
                payload = {"image": image[start:stop], "axes": "tzyx", "series": name, "t0": start,
                           "last": window == 1}  # fmt: skip
                futures[name] = pool.submit(tiny, payload)
            for name, future in futures.items():
                results[name].append(future.result())
    for name, expected in (("a", whole), ("b", expected_b)):
        joined = {k: np.concatenate([r["nodes"][k] for r in results[name]]) for k in ("id", "y", "x")}
        assert np.array_equal(joined["id"], expected["nodes"]["id"]), name
        assert np.allclose(joined["x"], expected["nodes"]["x"]) and np.allclose(joined["y"], expected["nodes"]["y"])
        # each window's mothers and edges are BABY's by its last frame: the last window's are the series'
        last = results[name][-1]["nodes"]
        assert np.array_equal(last["mother"], expected["nodes"]["mother"][-len(last["id"]) :]), name
        assert edge_list(results[name][-1]["edges"]) == edge_list(expected["edges"]), name
    assert not np.allclose(whole["nodes"]["x"], expected_b["nodes"]["x"])
    # both series were ended by their last window: a window that continues one now starts nothing
    with pytest.raises(nahual.RemoteError, match="series 'a' is not open here: its first window must have t0 0"):
        tiny({"image": a[:2], "axes": "tzyx", "series": "a", "t0": 7})


def test_a_window_out_of_order_ends_its_series(tiny):
    series = budding_series(frames=4)
    tiny({"image": series[:2], "axes": "tzyx", "series": "gap", "last": False})
    with pytest.raises(nahual.RemoteError, match=r"series 'gap': its next window must have t0 2, got 3; the series"):
        tiny({"image": series[2:], "axes": "tzyx", "series": "gap", "t0": 3})
    with pytest.raises(nahual.RemoteError, match="series 'gap' is not open here"):
        tiny({"image": series[2:], "axes": "tzyx", "series": "gap", "t0": 2})


def test_the_pixel_size_rescales_to_the_sets_and_back(tiny, whole):
    fine = tiny({"image": budding_series(zoom=2), "axes": "tzyx"}, pixel_size=0.263 / 2)
    assert edge_list(fine["edges"]) == BUDDING_EDGES and fine["layers"].shape == (1, 7, 256, 256)
    assert np.allclose(fine["table"]["major_axis_um"], whole["table"]["major_axis_um"], rtol=0.1)
    assert np.allclose(fine["nodes"]["y"], 2 * whole["nodes"]["y"], atol=2)


def test_random_weights_trip_the_clogging_check_as_one_error_and_the_server_keeps_serving(client, tiny):
    random = client.load("baby", model="random", threads=1)
    with pytest.raises(nahual.RemoteError) as caught:
        random({"image": budding_series(frames=2), "axes": "tzyx"})
    assert caught.value.remote_type == "ContractError" and "\n" not in caught.value.remote_message
    assert caught.value.remote_message.startswith("BABY's clogging check tripped at frame 0: more than 0.75 of it")
    assert len(tiny({"image": budding_series(frames=2), "axes": "tzyx"})["nodes"]["id"]) == 4


def test_a_network_holding_a_python_lambda_is_refused_and_a_missing_set_is_one_line(client, cache):
    for model, needle in (("lambda", "Lambda layer with a Python `lambda`"), ("nowhere", "nahual weights fetch baby")):
        with pytest.raises(nahual.RemoteError) as caught:
            client.load("baby", model=model, threads=1)
        assert caught.value.remote_type == "WeightsError" and "\n" not in caught.value.remote_message
        assert needle in caught.value.remote_message


def test_a_z_stack_of_another_depth_is_a_contract_error(tiny):
    with pytest.raises(nahual.RemoteError, match="takes 5 z-sections per frame, the image has 3"):
        tiny({"image": budding_series(frames=2)[:, :3], "axes": "tzyx"})


class ServedBaby(ServedModel):
    """The served ``baby`` model, as :class:`ModelTests` sees a loaded one (errors raised as their nahual class)."""

    def __init__(self, handle: nahual.ModelHandle) -> None:
        self.handle = handle
        self.params = {**Baby.defaults, **handle.params}


class TestBaby(ModelTests):
    model_class = Baby
    load_params: ClassVar[dict[str, Any]] = TINY

    @pytest.fixture(scope="class")
    def model(self, client) -> ServedBaby:  # type: ignore[override]
        return ServedBaby(client.load("baby", **self.load_params))

    def make_payload(self) -> dict:
        return {"image": budding_series(frames=2, size=64), "axes": "tzyx"}


def test_the_model_is_registered_in_the_catalog_with_its_locked_tensorflow_environment():
    from nahual.catalog import default_env

    assert default_env("baby") == SPEC
    project = (envs_dir() / "baby" / "pyproject.toml").read_text()
    assert '"tensorflow-cpu==2.14.0"' in project and '"scikit-learn==1.2.2"' in project
    lock = (envs_dir() / "baby" / "uv.lock").read_text()
    assert 'name = "numpy"\nversion = "1.26.4"' in lock and str(envs_dir()) not in lock


@pytest.mark.parametrize("project", ["baby", "baby-cuda"])
def test_the_locks_match_their_pyprojects_and_nahuals(project):
    """Re-lock (uv lock --project envs/baby[-cuda]) after editing a pyproject.toml, nahual's included."""
    uv = shutil.which("uv")
    assert uv is not None, "uv is not on PATH (it comes with nahual[workflow])"
    argv = [uv, "lock", "--check", "--offline", "--project", str(envs_dir() / project), "--python", "python3"]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=120, env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    )
    assert done.returncode == 0, done.stderr[-2000:]
