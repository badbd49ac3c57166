"""The ``laptrack`` defaults follow the objects' scale: the same series at 10, 30 and 60 px is tracked alike.

Each series of :mod:`synthetic_tracks` has two divisions (daughters up to 0.8
diameter from their mother) and an object missing for one frame; the limits
left at null are multiples of the median object diameter, and pixel limits
given by the caller still win.
"""

from __future__ import annotations

import numpy as np
import pytest
from synthetic_tracks import DIVISIONS, ctc_scores, make_series

from nahual.lineage import NODE_ID_STRIDE
from nahual.models.laptrack import DIAMETERS, LapTrack, median_diameter

SIZES = (10, 30, 60)


@pytest.fixture(scope="module")
def model() -> LapTrack:
    instance = LapTrack()
    instance.load()
    return instance


def edge_set(result: dict) -> set[tuple[int, int]]:
    """The (source, target) node-id pairs of a result."""
    return set(zip(result["edges"]["source"].tolist(), result["edges"]["target"].tolist()))


def frames_spanned(result: dict) -> np.ndarray:
    """How many frames each edge of a result spans."""
    t = dict(zip(result["nodes"]["id"].tolist(), result["nodes"]["t"].tolist()))
    return np.array([t[d] - t[s] for s, d in edge_set(result)], np.int64)


@pytest.mark.parametrize("diameter", SIZES)
@pytest.mark.parametrize("seed", [0, 1])
def test_default_limits_find_divisions_and_the_gap_at_every_size(model, diameter, seed):
    series = make_series(diameter, seed=seed)
    assert len(series.divisions) == len(DIVISIONS)
    result = model.process({"labels": series.labels, "axes": "tyx"})
    pairs = edge_set(result)
    for mother, first, second in series.divisions:
        assert {(mother, first), (mother, second)} <= pairs
    truth = zip(series.edges["source"].tolist(), series.edges["target"].tolist())
    gaps = {(s, d) for s, d in truth if d // NODE_ID_STRIDE - s // NODE_ID_STRIDE == 2}
    assert len(gaps) == 1 and gaps <= pairs
    tra, division_f1 = ctc_scores(series, result, series.labels)
    assert tra >= 0.99 and division_f1 == 1.0


def test_the_old_15_px_constants_miss_the_divisions_of_60_px_cells(model):
    series = make_series(60)
    result = model.process(
        {"labels": series.labels, "axes": "tyx"}, max_distance=15, gap_max_distance=15, division_max_distance=15
    )
    pairs = edge_set(result)
    assert not any({(m, a), (m, b)} <= pairs for m, a, b in series.divisions)


def test_pixel_limits_given_by_the_caller_win_over_the_scale(model):
    series = make_series(60)
    payload = {"labels": series.labels, "axes": "tyx"}
    assert (frames_spanned(model.process(payload)) == 1).sum() > 50
    assert (frames_spanned(model.process(payload, max_distance=2, division_max_distance=0)) > 1).all()
    no_divisions = edge_set(model.process(payload, division_max_distance=0))
    assert not any({(m, a), (m, b)} <= no_divisions for m, a, b in series.divisions)
    assert (frames_spanned(model.process(payload, gap_max_distance=2)) == 1).all()


@pytest.mark.parametrize("diameter", SIZES)
def test_median_diameter_measures_the_series(diameter):
    series = make_series(diameter)
    assert abs(median_diameter(series.labels) - diameter) < 0.12 * diameter


def test_median_diameter_of_balls_in_3d_and_of_an_empty_series():
    zz, yy, xx = np.mgrid[0:24, 0:24, 0:24]
    ball = ((zz - 12) ** 2 + (yy - 12) ** 2 + (xx - 12) ** 2 <= 8**2).astype(np.uint32)
    assert abs(median_diameter(np.stack([ball, 3 * ball])) - 16) < 0.5
    assert median_diameter(np.zeros((2, 8, 8), np.uint32)) == 0.0


def test_the_rule_is_in_the_param_descriptions():
    described = {param.name: param.describe() for param in LapTrack.param_spec}
    for name, factor in DIAMETERS.items():
        assert f"null: {factor} x the median object diameter" in described[name] and "default null" in described[name]
