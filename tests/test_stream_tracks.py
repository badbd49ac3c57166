"""Tracks: a tracker's graph as GEFF with relabelled masks, and the CTC export."""

from __future__ import annotations

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")
geff = pytest.importorskip("geff")
tifffile = pytest.importorskip("tifffile")

from nahual.cli import main  # noqa: E402
from nahual.lineage import tracklets  # noqa: E402
from nahual.stream import read_tracks, write_image, write_labels  # noqa: E402


def disc(shape, centre, radius):
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


@pytest.fixture
def dividing(tmp_path):
    """Frame 0: a mother (label 4) and a bystander (9); frames 1-2: two daughters, the bystander, a newcomer."""
    shape = (60, 80)
    labels = np.zeros((3, *shape), np.uint32)
    labels[0][disc(shape, (20, 20), 8)] = 4
    labels[0][disc(shape, (45, 60), 5)] = 9
    for t in (1, 2):
        labels[t][disc(shape, (15, 15 + t), 5)] = 2
        labels[t][disc(shape, (25, 25 + t), 5)] = 3
        labels[t][disc(shape, (45, 60), 5)] = 7
    labels[2][disc(shape, (50, 15), 4)] = 1
    path = write_image(tmp_path / "img.zarr", (labels > 0).astype(np.uint8), "tyx", chunks=(1, 30, 40))
    write_labels(path, "seg", labels, "tyx")
    return path, labels


def test_tracker_output_is_geff_with_relabelled_masks_and_exports_to_ctc(dividing, tmp_path, capsys):
    path, labels = dividing
    assert (
        main(["apply", f"{path}/labels/seg", "lineage", "--local", "--model", "stream_models:Overlap", "--quiet"]) == 0
    )
    graph = f"{path}/tracks/lineage"
    geff.validate_structure(graph)
    nodes, _edges, meta = read_tracks(path, "lineage")
    assert meta["related_objects"][0]["path"] == "../../labels/lineage"
    assert meta["extra"]["nahual"]["model"] == "stream_models:Overlap"
    masks = zarr.open_group(f"{path}/labels/lineage", mode="r")["0"][...]
    # every node's seg_id is the value painted at its centroid in the relabelled masks
    for t, y, x, seg in zip(nodes["t"], nodes["y"], nodes["x"], nodes["seg_id"]):
        assert masks[int(t), round(y), round(x)] == seg
    assert np.array_equal(masks > 0, labels > 0)
    mother = masks[0, 20, 20]
    daughters = {int(masks[1, 15, 16]), int(masks[1, 25, 26])}
    assert len(daughters) == 2 and mother not in daughters
    assert masks[0, 45, 60] == masks[2, 45, 60]  # the bystander keeps its track

    out = tmp_path / "ctc"
    assert main(["export", "ctc", str(path), str(out)]) == 0
    rows = {tuple(map(int, line.split())) for line in (out / "res_track.txt").read_text().splitlines()}
    assert {(d, 1, 2, int(mother)) for d in daughters} <= rows
    assert (int(mother), 0, 0, 0) in rows and (int(masks[0, 45, 60]), 0, 2, 0) in rows
    assert (int(masks[2, 50, 15]), 2, 2, 0) in rows and len(rows) == 5
    frames = [tifffile.imread(out / f"mask{t:03d}.tif") for t in range(3)]
    assert all(f.dtype == np.uint16 for f in frames)
    assert np.array_equal(np.stack(frames), masks)


def test_tracks_need_labels(dividing, capsys):
    path, _ = dividing
    assert main(["apply", str(path), "lineage", "--local", "--model", "stream_models:Overlap", "--quiet"]) == 1
    assert "give a label image IMAGE/labels/NAME as input or --labels NAME" in capsys.readouterr().err


def test_tracklets_split_at_divisions_and_gaps():
    ids = np.array([1, 2, 3, 4, 5, 6])
    t = np.array([0, 1, 2, 2, 4, 5])
    edges = np.array([[1, 2], [2, 3], [2, 4], [4, 5], [5, 6]])
    track, rows = tracklets(ids, t, edges)
    assert track.tolist() == [1, 1, 2, 3, 4, 4]
    assert rows == [(1, 0, 1, 0), (2, 2, 2, 1), (3, 2, 2, 1), (4, 4, 5, 3)]


def test_tracklets_ignore_node_order():
    ids = np.array([30, 10, 20])
    t = np.array([2, 0, 1])
    track, _ = tracklets(ids, t, np.array([[10, 20], [20, 30]]))
    assert track.tolist() == [1, 1, 1]
