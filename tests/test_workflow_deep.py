"""The deep chain of ``config.deep-models.yaml``, run for real: Cellpose -> Trackastra -> regionprops on the demo.

``snakemake --cores 2 --configfile config.deep-models.yaml``, unchanged, in a
copy of the workflow, with ``NAHUAL_TORCH=cpu`` (the CPU build of the torch
environments, which ``.ci/install`` prepares) and the config's ``weights`` key
(``--config weights=DIR``, with no ``NAHUAL_WEIGHTS``) pointing at a weights
cache this module fills with test weights under the names the config asks
for: a CPnet fitted to discs for Cellpose's ``nuclei`` (``tests/cellpose_env.py``)
and the hand-set Trackastra toy model for ``general_2d`` (``tests/trackastra_weights.py``). Its outputs are read with
the readers of the default chain (ome-zarr-models, geff, anndata). The Slurm
dry run checks that only the Cellpose and DINOv2 servers ask for a GPU. The module skips,
saying how to prepare them, where the CPU environments are not prepared.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")
pytest.importorskip("snakemake")

from conftest import TESTS, object_f1  # noqa: E402
from dino_env import HUB_WIDTH  # noqa: E402
from served_models import cpu_environment  # noqa: E402
from test_workflow import STORE, assert_nothing_left, copy_workflow, run_snakemake, snakemake_env  # noqa: E402
from track_scores import metric_results, store_graph  # noqa: E402
from trackastra_weights import DEMO_CUTOFF  # noqa: E402
from workflow_runs import finished_run, weights_run  # noqa: E402

from nahual.weights import add  # noqa: E402

pytestmark = pytest.mark.slow

#: The chain's models and the environments (envs/NAME) their servers run in.
MODELS = {"cellpose": "cellpose", "trackastra": "trackastra", "regionprops": "regionprops", "dinov2": "dino"}
CONFIG = ("--configfile", "config.deep-models.yaml")


def cpu_python(model: str) -> str:
    """The interpreter of the prepared CPU build of ``envs/MODEL``, or a skip that says how to prepare it."""
    return cpu_environment(model).python()[0]


def made_weights(request: pytest.FixtureRequest, model: str, helper: str, *args: str) -> Path:
    """The folder ``tests/HELPER ARGS... FOLDER`` fills, run in ``model``'s environment, kept in pytest's cache.

    Fitting the Cellpose test net takes 20 s to 3 min on 2 cores; the cache
    entry is named after the helper's contents, so an edit of it remakes them.
    """
    script = TESTS / helper
    key = hashlib.sha256(script.read_bytes() + "\0".join(args).encode()).hexdigest()[:16]
    entry = request.config.cache.mkdir(f"nahual-test-weights-{script.stem}-{key}")
    folder, done = entry / "weights", entry / "done"
    if not done.exists():
        folder.mkdir(exist_ok=True)
        argv = [cpu_python(model), str(script), *args, str(folder)]
        subprocess.run(argv, check=True, capture_output=True, timeout=900)
        done.touch()
    return folder


@pytest.fixture(scope="module")
def weights(request, tmp_path_factory, torch_home) -> Path:
    """A weights cache with test weights under the names config.deep-models.yaml uses."""
    for env in ("cellpose", "trackastra", "dino"):
        cpu_python(env)  # skips unless the environments are prepared
    cellpose = made_weights(request, "cellpose", "cellpose_env.py", "weights")
    trackastra = made_weights(request, "trackastra", "trackastra_weights.py", "toy", "--cutoff", str(DEMO_CUTOFF))
    root = tmp_path_factory.mktemp("weights")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NAHUAL_WEIGHTS", str(root))
        add("cellpose", "nucleitorch_0", cellpose / "trained")  # the file Cellpose's built-in `nuclei` names
        add("trackastra", "general_2d", trackastra)
        add("dinov2", "dinov2_vits14_pretrain.pth", torch_home / "dinov2_vits14_pretrain.pth")
    return root


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory) -> Path:
    """A torch home whose hub cache holds a tiny ``facebookresearch/dinov2`` (tests/dino_env.py), and its weights."""
    home = tmp_path_factory.mktemp("torch")
    helper = [cpu_python("dino"), str(TESTS / "dino_env.py"), "hub-v2"]
    subprocess.run([*helper, str(home / "hub" / "facebookresearch_dinov2_main"), str(home)], check=True, timeout=300)
    return home


@pytest.fixture(scope="module")
def deep_run(weights, torch_home, tmp_path_factory) -> Iterator[Path]:
    """``snakemake --cores 2 --configfile config.deep-models.yaml`` on CPU torch with the test weights, in a copy."""
    workdir = copy_workflow(tmp_path_factory.mktemp("deep") / "wf")
    env = {**snakemake_env(), "NAHUAL_TORCH": "cpu", "TORCH_HOME": str(torch_home)}
    with weights_run(workdir, weights, *CONFIG, env=env) as run:
        yield run


def test_deep_run_leaves_nothing_and_ran_each_model_in_its_own_environment(deep_run):
    assert_nothing_left(deep_run)
    for model, env in MODELS.items():
        ready = (deep_run / "results" / "envs" / f"{model}.txt").read_text()
        assert f"envs/{env}/.venv/bin/python" in ready, ready


def test_deep_run_writes_valid_ome_zarr_labels_geff_and_anndata(deep_run):
    import anndata
    import geff
    from ome_zarr_models.v05 import Image, ImageLabel

    store = deep_run / STORE
    group = zarr.open_group(store, mode="r")
    assert Image.from_zarr(group).labels is not None
    assert {"cells", "lineage", "ground_truth"} <= set(group["labels"].attrs["ome"]["labels"])
    for name in ("cells", "lineage"):
        ImageLabel.from_zarr(group[f"labels/{name}"])
        labels = group[f"labels/{name}/0"]
        assert labels.dtype == np.uint32 and labels.shape == (8, 256, 256)
    geff.validate_structure(str(store / "tracks" / "lineage"))
    table = anndata.io.read_elem(group["tables/features"])
    cells = group["labels/cells/0"][...]
    assert table.n_obs == sum(len(np.unique(frame)) - 1 for frame in cells) > 0
    for step in ("cells", "lineage", "features", "profiles"):
        assert (deep_run / "results" / "demo" / f"{step}.done").exists()


def test_deep_run_profiles_each_cell_in_a_table_that_joins_the_measurements(deep_run):
    import anndata

    tables = deep_run / STORE / "tables"
    profiles, features = anndata.read_zarr(tables / "profiles"), anndata.read_zarr(tables / "features")
    channels = zarr.open_group(deep_run / STORE, mode="r")["0"].shape[1]
    assert profiles.X.dtype == np.float32 and profiles.n_vars == channels * HUB_WIDTH  # a CLS token per channel
    assert np.isfinite(profiles.X).all() and profiles.X.std(axis=0).min() > 0
    keys = ["t", "label"]
    joined = profiles.obs.merge(features.obs, on=keys, how="outer", indicator=True)
    assert (joined["_merge"] == "both").all() and len(joined) == features.n_obs  # one profile per measured cell
    assert profiles.uns["spatialdata_attrs"] == {
        "region": "labels/cells",
        "region_key": "region",
        "instance_key": "label",
    }
    assert profiles.uns["embedding"]["weights"] == "dinov2_vits14_pretrain.pth"


def test_deep_run_segments_and_tracks_the_demo(deep_run):
    from traccuracy.matchers import CTCMatcher
    from traccuracy.metrics import CTCMetrics

    from nahual.stream import read_tracks

    store = deep_run / STORE
    group = zarr.open_group(store, mode="r")
    truth, cells = group["labels/ground_truth/0"][...], group["labels/cells/0"][...]
    scores = [object_f1(t, p) for t, p in zip(truth, cells)]
    assert np.mean(scores) >= 0.7, scores  # a net fitted to plain discs, on textured nuclei
    # every segmented object is a node of the lineage, and its mask is painted with its track id
    nodes, edges, _ = read_tracks(store, "lineage")
    assert len(nodes["id"]) == sum(len(np.unique(frame)) - 1 for frame in cells) and len(edges) > 0
    ctc = metric_results(
        lambda: store_graph(store, "ground_truth"),
        lambda: store_graph(store, "lineage"),
        (CTCMatcher(), [CTCMetrics()]),
    )["CTCMetrics"]
    # the segmentation bounds it (DET 0.73 with the test net): the toy tracker links what was found
    assert ctc["DET"] >= 0.65 and ctc["TRA"] >= 0.65, ctc


def test_deep_slurm_dry_run_asks_a_gpu_for_the_cellpose_and_dinov2_servers_only(tmp_path):
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    workdir = copy_workflow(tmp_path / "wf")
    result = run_snakemake(workdir, "--workflow-profile", "profiles/slurm", "-n", *CONFIG, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    gpus = {}
    for job in (result.stdout + result.stderr).split("rule serve_model:")[1:]:
        step = re.search(r"wildcards: step=(\w+)", job).group(1)
        gpus[step] = int(re.search(r"resources: .*\bgpu=(\d+)", job).group(1))
    assert gpus == {"cells": 1, "lineage": 0, "features": 0, "profiles": 1}
    # what the Slurm executor makes of it when it submits the cells server's group job
    assert set_gres_string(SimpleNamespace(resources={"gpu": gpus["cells"]})) == " --gpus=1"
    assert set_gres_string(SimpleNamespace(resources={"gpu": gpus["lineage"]})) == ""


#: The default chain's segmentation, then DINOv2 per nucleus and per 64-pixel tile of each stream tile.
EMBED_CONFIG = {
    "models": {"dinov2": {"params": {"model": "dinov2_vits14", "device": "cpu", "threads": 1, "size": 56}}},
    "chain": [
        {"name": "nuclei", "model": "threshold", "input": "image"},
        {"name": "profiles", "model": "dinov2", "input": "nuclei", "kind": "embeddings"},
        {
            "name": "tiles",
            "model": "dinov2",
            "input": "image",
            "kind": "embeddings",
            "params": {"granularity": "tile", "tile_size": 64},
        },
    ],
}


@pytest.fixture(scope="module")
def embed_run(weights, torch_home, tmp_path_factory) -> Iterator[Path]:
    """``threshold -> dinov2`` (per object and per tile) on the demo, merged over config.yaml, in a copy."""
    import yaml

    workdir = copy_workflow(tmp_path_factory.mktemp("embed") / "wf")
    (workdir / "embed.yaml").write_text(yaml.safe_dump(EMBED_CONFIG, sort_keys=False))
    env = {**snakemake_env(), "NAHUAL_TORCH": "cpu", "TORCH_HOME": str(torch_home), "NAHUAL_WEIGHTS": str(weights)}
    with finished_run(workdir, "--cores", "2", "--configfile", "embed.yaml", env=env) as run:
        yield run


def test_threshold_then_dinov2_writes_a_profile_per_nucleus_and_per_tile(embed_run):
    import anndata

    assert_nothing_left(embed_run)
    group = zarr.open_group(embed_run / STORE, mode="r")
    frames, channels, height, width = group["0"].shape
    nuclei = group["labels/nuclei/0"][...]
    profiles = anndata.read_zarr(embed_run / STORE / "tables" / "profiles")
    expected = [(t, label) for t in range(frames) for label in np.unique(nuclei[t]) if label]
    assert sorted(zip(profiles.obs["t"], profiles.obs["label"])) == expected
    assert profiles.n_vars == channels * HUB_WIDTH and np.isfinite(profiles.X).all()
    for axis, size in (("y", height), ("x", width)):  # each box holds its nucleus, in frame coordinates
        assert (profiles.obs[f"bbox_{axis}_min"] < profiles.obs[f"bbox_{axis}_max"]).all()
        assert (profiles.obs[f"bbox_{axis}_max"] > 0).all() and (profiles.obs[f"bbox_{axis}_min"] < size).all()
    tiles = anndata.read_zarr(embed_run / STORE / "tables" / "tiles")
    assert tiles.n_obs == frames * (height // 64) * (width // 64) and tiles.n_vars == channels * HUB_WIDTH
    origins = set(zip(tiles.obs["t"], tiles.obs["bbox_y_min"], tiles.obs["bbox_x_min"]))
    assert origins == {(t, y, x) for t in range(frames) for y in range(0, height, 64) for x in range(0, width, 64)}
    assert "spatialdata_attrs" not in tiles.uns  # tiles belong to no label image
