"""Tests of nahual.demo and ``nahual demo-data``: determinism, realism of the scene, ground truth."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from nahual.demo import DEFAULT_SIZE, DemoSize, make_demo
from nahual.errors import ConfigError

SMALL = DemoSize(frames=10, height=160, width=160, nuclei=10, radius=8.0)


@pytest.fixture(scope="module")
def scene():
    return make_demo(SMALL, seed=3)


def _touching_pairs(frame: np.ndarray) -> set[tuple[int, int]]:
    pairs = set()
    for a, b in ((frame[:, 1:], frame[:, :-1]), (frame[1:], frame[:-1])):
        edge = (a != b) & (a > 0) & (b > 0)
        pairs |= {tuple(sorted(p)) for p in zip(a[edge].tolist(), b[edge].tolist())}
    return pairs


def test_same_seed_same_data_other_seed_other_data(scene):
    again = make_demo(SMALL, seed=3)
    other = make_demo(SMALL, seed=4)
    assert np.array_equal(scene.image, again.image) and np.array_equal(scene.labels, again.labels)
    assert not np.array_equal(scene.labels, other.labels)


def test_shapes_and_types_follow_the_size(scene):
    assert scene.image.shape == (10, 2, 160, 160) and scene.image.dtype == np.uint16
    assert scene.labels.shape == (10, 160, 160) and scene.labels.dtype == np.uint32


def test_default_size_is_small_and_has_two_channels():
    assert DEFAULT_SIZE.frames * DEFAULT_SIZE.height * DEFAULT_SIZE.width <= 8 * 256 * 256
    data = make_demo(seed=0)
    assert data.image.shape[1] >= 2


def test_nuclei_move_touch_and_divide():
    data = make_demo(seed=0)
    assert data.divisions >= 1
    assert any(_touching_pairs(frame) for frame in data.labels)
    first, last = data.nodes["t"] == 0, data.nodes["t"] == data.labels.shape[0] - 1
    common = np.intersect1d(data.nodes["label"][first], data.nodes["label"][last])
    shift = [
        np.hypot(
            *(
                data.nodes[ax][last & (data.nodes["label"] == lab)]
                - data.nodes[ax][first & (data.nodes["label"] == lab)]
                for ax in "yx"
            )
        )
        for lab in common
    ]
    assert np.median(shift) > 1.0


def test_background_is_uneven_and_noisy(scene):
    background = scene.image[0, 0][scene.labels[0] == 0].astype(float)
    assert background.std() > 5
    ys, xs = np.nonzero(scene.labels[0] == 0)
    centre = np.hypot(ys - 80, xs - 80) < 30
    corner = np.hypot(ys - 80, xs - 80) > 100
    assert abs(background[centre].mean() - background[corner].mean()) > 20
    nuclei = scene.image[0, 0][scene.labels[0] > 0].astype(float)
    assert nuclei.mean() > background.mean() + 5 * background.std() / 2


def test_second_channel_marks_the_surroundings_of_nuclei(scene):
    from scipy import ndimage

    frame, mask = scene.image[0, 1].astype(float), scene.labels[0] > 0
    ring = ndimage.binary_dilation(mask, iterations=3) & ~mask
    far = ~ndimage.binary_dilation(mask, iterations=25)
    assert frame[ring].mean() > frame[far].mean() + 50


def test_labels_are_track_ids_and_match_the_track_table(scene):
    for track, start, end, parent in zip(*(scene.tracks[k] for k in ("track_id", "start", "end", "parent"))):
        present = np.flatnonzero([(frame == track).any() for frame in scene.labels])
        assert present.min() == start and present.max() == end and present.size == end - start + 1
        if parent:
            assert scene.tracks["end"][scene.tracks["track_id"] == parent][0] == start - 1


def test_lineage_graph_links_consecutive_frames_and_mothers_to_two_daughters(scene):
    nodes, edges = scene.nodes, scene.edges
    t_of = dict(zip(nodes["id"].tolist(), nodes["t"].tolist()))
    assert all(t_of[d] == t_of[s] + 1 for s, d in zip(edges["source"].tolist(), edges["target"].tolist()))
    _sources, counts = np.unique(edges["source"], return_counts=True)
    assert set(counts.tolist()) <= {1, 2}
    assert (counts == 2).sum() == scene.divisions
    starts_without_parent = (scene.tracks["parent"] == 0).sum()
    assert len(edges["source"]) == len(nodes["id"]) - starts_without_parent


def test_a_scene_too_small_for_its_nuclei_or_empty_is_refused():
    with pytest.raises(ConfigError, match="too small"):
        make_demo(dataclasses.replace(SMALL, height=20), seed=0)
    with pytest.raises(ConfigError, match="at least one frame and one nucleus"):
        make_demo(dataclasses.replace(SMALL, nuclei=0), seed=0)


def test_demo_data_command_writes_valid_ome_zarr_with_ground_truth(tmp_path, capsys):
    import zarr
    from ome_zarr_models.v05 import Image

    from nahual.cli import main
    from nahual.stream import read_tracks

    out = tmp_path / "demo.zarr"
    assert main(["demo-data", str(out), "--seed", "2", "--frames", "5", "--size", "128", "--nuclei", "6"]) == 0
    assert "5 frames" in capsys.readouterr().out
    expected = make_demo(dataclasses.replace(DEFAULT_SIZE, frames=5, height=128, width=128, nuclei=6), seed=2)
    root = zarr.open_group(out, mode="r")
    Image.from_zarr(root)  # raises on invalid OME-Zarr 0.5 metadata
    assert np.array_equal(root["0"][:], expected.image)
    assert np.array_equal(zarr.open_array(out / "labels" / "ground_truth" / "0", mode="r")[:], expected.labels)
    # two levels by default, for the image and its label images alike
    assert np.array_equal(root["1"][:], expected.image[..., ::2, ::2])
    assert np.array_equal(root["labels/ground_truth/1"][:], expected.labels[..., ::2, ::2])
    nodes, edges, _ = read_tracks(out, "ground_truth")
    assert sorted(map(tuple, np.asarray(edges).tolist())) == sorted(
        zip(expected.edges["source"].tolist(), expected.edges["target"].tolist())
    )
    assert np.array_equal(np.sort(nodes["id"]), np.sort(expected.nodes["id"]))


def test_demo_data_command_refuses_to_overwrite(tmp_path, capsys):
    from nahual.cli import main

    out = tmp_path / "demo.zarr"
    out.mkdir()
    assert main(["demo-data", str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main(["demo-data", str(tmp_path / "other.zarr"), "--levels", "0"]) == 1
    assert "--levels must be at least 1, got 0" in capsys.readouterr().err
