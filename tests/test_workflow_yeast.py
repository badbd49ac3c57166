"""The yeast chain of ``config.yeast.yaml``, run for real: BABY -> regionprops on a synthetic budding series.

``snakemake --cores 2 --configfile config.yeast.yaml``, unchanged, in a copy
of the workflow, on a synthetic brightfield series (``tests/baby_env.py``:
two cells, then a bud on one of them) written where the config names its
image, with the config's ``weights`` key pointing at a weights cache holding
the tiny deterministic model set under the name the config asks for. Its
outputs are read with the readers of the default chain (ome-zarr-models,
geff, anndata) and exported to CTC. The module skips, saying how to prepare
it, where ``envs/baby`` is not prepared.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")
pytest.importorskip("snakemake")

from baby_env import PIXEL_SIZE, budding_series  # noqa: E402
from conftest import ROOT  # noqa: E402
from test_models_baby import environment, made_modelsets, node  # noqa: E402
from test_workflow import assert_nothing_left, copy_workflow, snakemake_env  # noqa: E402
from workflow_runs import weights_run  # noqa: E402

from nahual.weights import add  # noqa: E402

pytestmark = pytest.mark.slow

STORE = "resources/yeast.zarr"
CONFIG = ("--configfile", "config.yeast.yaml")


@pytest.fixture(scope="module")
def weights(request, tmp_path_factory) -> Path:
    """A weights cache holding the tiny model set under the name config.yeast.yaml uses."""
    environment()  # skips unless envs/baby is prepared
    root = tmp_path_factory.mktemp("weights")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NAHUAL_WEIGHTS", str(root))
        add("baby", "yeast-alcatras-brightfield-EMCCD-60x-5z", made_modelsets(request) / "tiny")
    return root


@pytest.fixture(scope="module")
def yeast_run(weights, tmp_path_factory) -> Iterator[Path]:
    """The yeast chain in a copy of the workflow, on the synthetic series as a (t, c, z, y, x) OME-Zarr image."""
    from nahual.stream import write_image

    workdir = copy_workflow(tmp_path_factory.mktemp("yeast") / "wf")
    shutil.copy(ROOT / "config.yeast.yaml", workdir / "config.yeast.yaml")
    series = budding_series()[:, np.newaxis]
    write_image(workdir / STORE, series, "tczyx", scale=(1.0, 1.0, 0.5, PIXEL_SIZE, PIXEL_SIZE))
    with weights_run(workdir, weights, *CONFIG, env=snakemake_env()) as run:
        yield run


def test_the_yeast_run_leaves_nothing_and_ran_baby_in_its_own_environment(yeast_run):
    assert_nothing_left(yeast_run)
    ready = (yeast_run / "results" / "envs" / "baby.txt").read_text()
    assert "envs/baby/.venv/bin/python" in ready, ready
    for step in ("cells", "features"):
        assert (yeast_run / "results" / "yeast" / f"{step}.done").exists()


def test_the_yeast_run_writes_valid_labels_layers_geff_and_tables(yeast_run, tmp_path):
    import anndata
    import geff
    from ome_zarr_models.v05 import Image, ImageLabel

    from nahual.stream import export_ctc, read_tracks

    store = yeast_run / STORE
    group = zarr.open_group(store, mode="r")
    assert Image.from_zarr(group).labels is not None
    assert {"cells", "cells-layer0"} <= set(group["labels"].attrs["ome"]["labels"])
    for name in ("cells", "cells-layer0"):
        ImageLabel.from_zarr(group[f"labels/{name}"])
        labels = group[f"labels/{name}/0"]
        assert labels.dtype == np.uint32 and labels.shape == (7, 5, 128, 128)
    cells = group["labels/cells/0"][...]
    assert all(np.array_equal(frame[0], frame[z]) for frame in cells for z in range(5))  # every z-plane the same
    assert [sorted(set(np.unique(frame)) - {0}) for frame in cells] == [[1, 2]] * 2 + [[1, 2, 3]] * 5
    geff.validate_structure(str(store / "tracks" / "cells"))
    nodes, edges, _ = read_tracks(store, "cells")
    lineage = dict(zip(map(tuple, edges.tolist()), group["tracks/cells/edges/props/lineage/values"][...].tolist()))
    assert [pair for pair, code in lineage.items() if code == 1] == [(node(1, 1), node(2, 3))]
    own = anndata.io.read_elem(group["tables/cells"])
    assert own.n_obs == len(nodes["id"]) == 19 and own.obs["mother"][own.obs["label"] == 3].tolist() == [1] * 5
    measured = anndata.io.read_elem(group["tables/features"])
    assert measured.n_obs == 19  # regionprops measured every cell of every frame
    written = export_ctc(store, tmp_path / "ctc", "cells")
    rows = np.loadtxt(tmp_path / "ctc" / "res_track.txt", dtype=np.int64).reshape(-1, 4)
    # CTC has no budding: the mother's track ends where the bud starts, and both go on as her daughters
    assert written == {"frames": 7, "tracks": 4} and sorted(rows[:, 3].tolist()) == [0, 0, 1, 1]
