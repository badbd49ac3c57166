"""Tests of the ``laptrack`` model, in process: CTC measures on demo data, gaps, pixel limits, windows, errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from synthetic_tracks import ctc_scores

from nahual.demo import DEFAULT_SIZE, make_demo
from nahual.errors import ContractError
from nahual.lineage import NODE_ID_STRIDE
from nahual.models.laptrack import LapTrack
from nahual.testing import ModelTests


@pytest.fixture(scope="module")
def model() -> LapTrack:
    instance = LapTrack()
    instance.load()
    return instance


def moving_squares(frames: int, spots: list[tuple[int, int, int, int]]) -> np.ndarray:
    """(t, y, x) labels: each spot (label, y, x, vx) a 5x5 square moving right."""
    labels = np.zeros((frames, 64, 96), np.uint32)
    for t in range(frames):
        for label, y, x, vx in spots:
            labels[t, y - 2 : y + 3, x + vx * t - 2 : x + vx * t + 3] = label
    return labels


@pytest.mark.parametrize("seed", [0, 3])
def test_tracking_ground_truth_masks_scores_tra_and_division_f1(model, seed):
    truth = make_demo(dataclasses.replace(DEFAULT_SIZE, frames=16), seed=seed)
    assert truth.divisions >= 2
    result = model.process({"labels": truth.labels, "axes": "tyx"})
    tra, division_f1 = ctc_scores(truth, result, truth.labels)
    assert tra >= 0.99 and division_f1 >= 0.9


def test_output_tables_are_consistent(model):
    truth = make_demo(seed=0)
    out = model.process({"labels": truth.labels, "axes": "tyx"})
    nodes, edges, track_id, tracks = out["nodes"], out["edges"], out["track_id"], out["tracks"]
    assert set(nodes) == {"id", "t", "label", "y", "x"} and len(track_id) == len(nodes["id"])
    assert np.array_equal(nodes["id"], nodes["t"] * 2**32 + nodes["label"])
    t_of = dict(zip(nodes["id"].tolist(), nodes["t"].tolist()))
    assert all(t_of[s] < t_of[d] for s, d in zip(edges["source"].tolist(), edges["target"].tolist()))
    for k, track in enumerate(tracks["track_id"]):
        frames = nodes["t"][track_id == track]
        assert frames.min() == tracks["start"][k] and frames.max() == tracks["end"][k]
        assert np.array_equal(np.sort(frames), np.arange(frames.min(), frames.max() + 1))
    # ground truth labels are track ids: each predicted track covers exactly one true track
    assert all(len(np.unique(nodes["label"][track_id == track])) == 1 for track in tracks["track_id"])
    assert np.array_equal(np.sort(tracks["parent"] > 0), np.sort(truth.tracks["parent"] > 0))


def test_a_gap_is_closed_into_a_new_track_whose_parent_is_the_old_one(model):
    labels = moving_squares(6, [(1, 20, 10, 2), (2, 45, 10, 3)])
    labels[2][labels[2] == 1] = 0  # object 1 missed in frame 2
    out = model.process({"labels": labels, "axes": "tyx"})
    pairs = set(zip(out["edges"]["source"].tolist(), out["edges"]["target"].tolist()))
    assert (1 * 2**32 + 1, 3 * 2**32 + 1) in pairs
    before, after = (out["track_id"][out["nodes"]["id"] == t * 2**32 + 1][0] for t in (1, 3))
    assert before != after and out["tracks"]["parent"][after - 1] == before
    unlinked = model.process({"labels": labels, "axes": "tyx"}, gap_frames=0)
    assert (1 * 2**32 + 1, 3 * 2**32 + 1) not in set(
        zip(unlinked["edges"]["source"].tolist(), unlinked["edges"]["target"].tolist())
    )


def test_max_distance_in_pixels_overrides_the_scale_of_the_objects(model):
    labels = moving_squares(3, [(1, 30, 10, 12)])  # 5 x 5 squares (5.6 px across) moving 12 px a frame

    def links(**params: float) -> int:
        return len(model.process({"labels": labels, "axes": "tyx"}, **params)["edges"]["source"])

    assert links() == 0 and links(max_distance=15) == 2 and links(max_distance=8, gap_max_distance=8) == 0


def test_windows_with_t0_share_node_ids_with_the_whole_series(model):
    truth = make_demo(seed=1)
    whole = model.process({"labels": truth.labels, "axes": "tyx"})
    window = model.process({"labels": truth.labels[4:], "axes": "tyx"}, t0=4)
    later = whole["nodes"]["t"] >= 4
    assert np.array_equal(window["nodes"]["id"], whole["nodes"]["id"][later])
    whole_pairs = set(zip(whole["edges"]["source"].tolist(), whole["edges"]["target"].tolist()))
    assert set(zip(window["edges"]["source"].tolist(), window["edges"]["target"].tolist())) <= whole_pairs


def test_3d_series_is_tracked_with_z_positions(model):
    labels = np.zeros((4, 10, 32, 32), np.uint32)
    for t in range(4):
        labels[t, 3:6, 10 + 2 * t : 14 + 2 * t, 8:12] = 5
    out = model.process({"labels": labels, "axes": "tzyx"})
    assert set(out["nodes"]) == {"id", "t", "label", "z", "y", "x"}
    assert np.allclose(out["nodes"]["z"], 4.0) and len(out["edges"]["source"]) == 3
    assert out["tracks"]["track_id"].tolist() == [1]


def test_an_empty_series_gives_empty_tables(model):
    out = model.process({"labels": np.zeros((3, 16, 16), np.uint32), "axes": "tyx"})
    assert len(out["nodes"]["id"]) == 0 and len(out["edges"]["source"]) == 0 and len(out["tracks"]["track_id"]) == 0


class TestLapTrack(ModelTests):
    model_class = LapTrack

    def make_payload(self) -> dict:
        return {"labels": moving_squares(3, [(1, 20, 10, 2), (2, 45, 10, 3)]), "axes": "tyx"}


def test_a_float_label_series_is_refused(model):
    with pytest.raises(ContractError, match="integer label array, got float32"):
        model.process({"labels": np.zeros((3, 8, 8), np.float32), "axes": "tyx"})


def test_node_ids_follow_the_lineage_format(model):
    out = model.process({"labels": moving_squares(2, [(7, 20, 10, 2)]), "axes": "tyx"})
    assert out["nodes"]["id"].tolist() == [7, NODE_ID_STRIDE + 7]
