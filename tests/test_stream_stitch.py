"""Stitching: a tiled run equals the whole-image run up to renumbering; the arithmetic underneath."""

from __future__ import annotations

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")
ome_v05 = pytest.importorskip("ome_zarr_models.v05")

from stream_models import Blobs  # noqa: E402

from nahual.stream import LocalModel, StreamOptions, apply, finish, write_image  # noqa: E402
from nahual.stream._plan import make_plan  # noqa: E402
from nahual.stream._stitch import Relabel, UnionFind, compact_labels, overlap_pairs  # noqa: E402


def blobs(shape: tuple[int, ...], corners: int, seed: int, radius: tuple[int, int] = (3, 14)) -> np.ndarray:
    """Random discs (balls) plus discs centred on the corners of a ``corners``-pixel grid."""
    rng = np.random.default_rng(seed)
    image = np.zeros(shape, np.float32)
    grids = np.ogrid[tuple(slice(0, n) for n in shape[1:])]
    for frame in image:
        centres = [rng.integers(0, shape[1:]) for _ in range(40)]
        centres += [np.array(c) for c in np.ndindex(*[n // corners + 1 for n in shape[1:]])]
        for i, centre in enumerate(centres):
            centre = centre if i < 40 else centre * corners
            r = rng.integers(*radius)
            frame[sum((g - c) ** 2 for g, c in zip(grids, centre)) <= r * r] = 1.0
    return image


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label images split the pixels the same way (background shared)."""
    if not np.array_equal(a == 0, b == 0):
        return False
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return pairs.shape[1] == np.unique(a).size == np.unique(b).size


def labels_of(path, name):
    return zarr.open_group(f"{path}/labels/{name}", mode="r")["0"][...]


@pytest.fixture(scope="module")
def model():
    with LocalModel(Blobs) as handle:
        yield handle


def test_tiled_equals_whole_image_with_corner_crossing_objects(tmp_path, model):
    path = write_image(tmp_path / "img.zarr", blobs((2, 600, 560), 256, seed=1), "tyx", chunks=(1, 128, 128))
    tiled = apply(model, path, "tiled", StreamOptions(tile="y=256,x=256", halo=48), progress=False)
    whole = apply(model, path, "whole", StreamOptions(tile="none"), progress=False)
    assert tiled["blocks"] == 2 * 3 * 3 and whole["blocks"] == 2
    a, b = labels_of(path, "tiled"), labels_of(path, "whole")
    assert same_partition(a, b)
    assert tiled["final"]["merged"] > 0 and tiled["final"]["objects"] == whole["final"]["objects"]
    assert np.array_equal(np.unique(a), np.arange(a.max() + 1))  # ids 1..N, unique across frames
    assert not set(np.unique(a[0])[1:]) & set(np.unique(a[1])[1:])
    group = zarr.open_group(str(path), mode="r")
    ome_v05.Image.from_zarr(group)
    ome_v05.ImageLabel.from_zarr(group["labels/tiled"])
    assert group["labels/tiled/0"].dtype == np.uint32 and group["labels/tiled/0"].chunks == (1, 128, 128)
    provenance = group["labels/tiled"].attrs["nahual"]
    assert provenance["model"] == "blobs" and provenance["tile"] == {"y": 256, "x": 256} and provenance["halo"] == 48
    assert provenance["input_shape"] == [2, 600, 560] and provenance["nahual_version"] and provenance["started"]


def test_3d_tiles_stitch_like_the_whole_volume(tmp_path, model):
    path = write_image(
        tmp_path / "vol.zarr", blobs((1, 24, 60, 60), 20, seed=2, radius=(2, 5)), "tzyx", chunks=(1, 8, 20, 20)
    )
    apply(model, path, "tiled", StreamOptions(tile="z=8,y=20,x=20", halo=6), progress=False)
    apply(model, path, "whole", StreamOptions(tile="none"), progress=False)
    assert same_partition(labels_of(path, "tiled"), labels_of(path, "whole"))


def test_without_halo_objects_stay_cut(tmp_path, model):
    path = write_image(tmp_path / "img.zarr", blobs((1, 200, 200), 64, seed=3), "tyx")
    apply(model, path, "cut", StreamOptions(tile="y=64,x=64", halo=0), progress=False)
    apply(model, path, "whole", StreamOptions(tile="none"), progress=False)
    a, b = labels_of(path, "cut"), labels_of(path, "whole")
    assert np.array_equal(a == 0, b == 0) and np.unique(a).size > np.unique(b).size


def test_finishing_twice_changes_nothing(tmp_path, model):
    path = write_image(tmp_path / "img.zarr", blobs((1, 128, 128), 64, seed=4), "tyx")
    first = apply(model, path, "seg", StreamOptions(tile="y=64,x=64", halo=16), progress=False)["final"]
    before = labels_of(path, "seg")
    assert finish(path, "seg") == first
    again = apply(model, path, "seg", StreamOptions(tile="y=64,x=64", halo=16), progress=False)
    assert again["processed"] == 0 and np.array_equal(labels_of(path, "seg"), before)


def test_union_find_roots_are_smallest():
    union = UnionFind()
    union.union(9, 4)
    union.union(4, 7)
    union.union(12, 13)
    assert union.merged() == {9: 4, 7: 4, 13: 12}
    assert union.find(5) == 5


def test_relabel_numbers_roots_in_order():
    # block 0 uses ids 1..3 (offset 0), block 1 ids 101..102 (offset 100); 101 merges into 2
    relabel = Relabel(np.array([0, 100]), np.array([3, 2]), {101: 2})
    ids = np.array([[0, 1, 2, 3], [101, 102, 0, 2]])
    np.testing.assert_array_equal(relabel(ids), [[0, 1, 2, 3], [2, 4, 0, 2]])
    assert relabel.count == 4


def test_overlap_pairs_ignore_slight_touches():
    view = np.array([[5, 5, 5, 0], [5, 5, 5, 6]])
    stored = np.array([[8, 8, 8, 9], [8, 8, 8, 9]])
    assert overlap_pairs(view, stored).tolist() == [[5, 8], [6, 9]]
    touching = np.array([[5, 5, 5, 5], [0, 0, 0, 0]])
    other = np.array([[0, 0, 0, 9], [0, 0, 0, 9]])
    assert overlap_pairs(touching, other, min_overlap=0.5).tolist() == [[5, 9]]
    assert overlap_pairs(touching, other, min_overlap=0.6).tolist() == []


def test_compact_labels_keeps_order():
    local, values = compact_labels(np.array([0, 40, 7, 40, 0, 9]))
    assert local.tolist() == [0, 3, 1, 3, 0, 2] and values.tolist() == [7, 9, 40]


def test_ngff_04_store_gets_04_labels_that_stitch_the_same(tmp_path, model):
    ome_v04 = pytest.importorskip("ome_zarr_models.v04")
    path = str(tmp_path / "v2.zarr")
    group = zarr.open_group(path, mode="w", zarr_format=2)
    axes = [{"name": "t", "type": "time"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": axes,
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 0.5, 0.5]}]}],
        }
    ]
    group.create_array("0", shape=(1, 160, 160), chunks=(1, 64, 64), dtype="float32")[...] = blobs((1, 160, 160), 64, 9)
    apply(model, path, "tiled", StreamOptions(tile="y=64,x=64", halo=16), progress=False)
    apply(model, path, "whole", StreamOptions(tile="none"), progress=False)
    assert same_partition(labels_of(path, "tiled"), labels_of(path, "whole"))
    reopened = zarr.open_group(path, mode="r")
    ome_v04.Image.from_zarr(reopened)
    ome_v04.ImageLabel.from_zarr(reopened["labels/tiled"])
    assert reopened["labels/tiled/0"].metadata.zarr_format == 2
    assert reopened["labels"].attrs["labels"] == ["tiled", "whole"]


def test_each_frame_is_stitched_on_its_own(tmp_path, model, monkeypatch):
    """The stitch tables hold one frame's blocks at a time: memory does not grow with the time-lapse."""
    from nahual.stream._labels import LabelSink

    stitched, relabel = [], LabelSink._relabel
    monkeypatch.setattr(
        LabelSink,
        "_relabel",
        lambda self, blocks, counts: stitched.append(blocks) or relabel(self, blocks, counts),
    )
    path = write_image(tmp_path / "img.zarr", blobs((3, 300, 300), 128, seed=2), "tyx", chunks=(1, 128, 128))
    tiled = apply(model, path, "tiled", StreamOptions(tile="y=128,x=128", halo=32), progress=False)
    assert [sorted({b.start[0] for b in frame}) for frame in stitched] == [[0], [1], [2]]
    assert [len(frame) for frame in stitched] == [9, 9, 9]
    whole = apply(model, path, "whole", StreamOptions(tile="none"), progress=False)
    assert same_partition(labels_of(path, "tiled"), labels_of(path, "whole"))
    assert tiled["final"]["objects"] == whole["final"]["objects"] == labels_of(path, "tiled").max()


def test_finishing_decodes_each_blocks_ids_once_for_the_merges_and_once_to_relabel(tmp_path, model, monkeypatch):
    """A block's ids are read by up to 8 neighbours' halo merges: the recent ones are kept, not decoded again."""
    from collections import Counter

    from nahual.stream._labels import LabelSink, _neighbour_span

    reads, ids = Counter(), LabelSink._ids
    monkeypatch.setattr(LabelSink, "_ids", lambda self, block: reads.update([block.index]) or ids(self, block))
    path = write_image(tmp_path / "img.zarr", blobs((2, 256, 320), 128, seed=4), "tyx", chunks=(1, 64, 64))
    options = StreamOptions(tile="y=64,x=64", halo=16)
    apply(model, path, "tiled", options, progress=False)
    plan = make_plan(Blobs.contract, "labels", "tyx", (2, 256, 320), (1, 64, 64), options)
    assert _neighbour_span(plan) == 5 + 1  # the block below-right of one is 6 blocks on, rows of 5 tiles
    assert len(reads) == 40 and max(reads.values()) <= 2, reads
    whole = apply(model, path, "whole", StreamOptions(tile="none"), progress=False)
    assert same_partition(labels_of(path, "tiled"), labels_of(path, "whole")) and whole["final"]["objects"] > 10


def test_ids_are_counted_per_frame_so_a_long_time_lapse_keeps_4_byte_ids():
    """A time-lapse of 2**32 pixels in all (1024 frames of 2048²) records uint32 ids, not uint64."""
    from nahual.stream._labels import block_frames, block_offsets, intermediate_dtype

    options = StreamOptions(tile="y=1024,x=1024", halo=16)
    plan = make_plan(Blobs.contract, "labels", "tyx", (1024, 2048, 2048), (1, 1024, 1024), options)
    frames = block_frames(plan, plan.blocks())
    offsets = block_offsets(plan, frames)
    assert offsets[:8] == [0, 2**20, 2 * 2**20, 3 * 2**20] * 2  # each frame's 4 tiles count from 0
    assert intermediate_dtype(plan, frames) == np.uint32
    huge = make_plan(Blobs.contract, "labels", "tyx", (2, 65536, 65536), (1, 4096, 4096), StreamOptions(tile="none"))
    assert intermediate_dtype(huge, block_frames(huge, huge.blocks())) == np.uint64  # a 2**32-pixel frame: 8 bytes


def test_a_run_recorded_in_an_earlier_layout_is_refused_not_resumed_or_finished(tmp_path, model):
    """Ids counted over the store (records of layout 1) must not mix with ids counted per frame."""
    import json
    import os

    from nahual.errors import ConfigError
    from nahual.stream._resume import RunState

    path = write_image(tmp_path / "img.zarr", blobs((2, 128, 128), 64, seed=3), "tyx", chunks=(1, 64, 64))
    options = StreamOptions(tile="y=64,x=64", halo=16)
    apply(model, path, "seg", options, progress=False, finalize=False)
    run_json = f"{RunState(path, 'seg').path}/run.json"
    with open(run_json) as f:
        record = json.load(f)
    del record["identity"]["records"]  # as an earlier nahual wrote it
    with open(run_json, "w") as f:
        json.dump(record, f)
    with pytest.raises(ConfigError, match=r"block records of layout 1, this one reads 2.*nahual reset"):
        finish(path, "seg")
    with pytest.raises(ConfigError, match=r"different run \(records differ\)"):
        apply(model, path, "seg", options, progress=False)
    assert not os.path.exists(f"{path}/labels/seg")  # nothing finished from the mixed records


def test_an_output_completed_by_an_earlier_nahual_is_still_complete(tmp_path, model):
    """How blocks were recorded does not matter once they are gone: a rerun finds the output done."""
    path = write_image(tmp_path / "img.zarr", blobs((2, 128, 128), 64, seed=3), "tyx", chunks=(1, 64, 64))
    options = StreamOptions(tile="y=64,x=64", halo=16)
    first = apply(model, path, "seg", options, progress=False)
    group = zarr.open_group(f"{path}/labels/seg", mode="r+")
    nahual_attrs = dict(group.attrs["nahual"])
    del nahual_attrs["run"]["identity"]["records"]  # as an earlier nahual wrote it
    group.attrs["nahual"] = nahual_attrs
    again = apply(model, path, "seg", options, progress=False)
    assert again["processed"] == 0 and again["final"] == first["final"]
