"""Tests of nahual.lineage: the node-id format every tracker and writer shares, and bad edges."""

from __future__ import annotations

import numpy as np
import pytest

from nahual.demo import make_demo
from nahual.errors import ContractError
from nahual.lineage import NODE_ID_STRIDE, TRACK_COLUMNS, tracking_result, tracklets


def test_node_ids_are_time_times_the_stride_plus_the_label():
    assert NODE_ID_STRIDE == 2**32
    truth = make_demo(seed=0)
    assert np.array_equal(truth.nodes["id"], truth.nodes["t"] * NODE_ID_STRIDE + truth.nodes["label"])


def test_an_edge_to_an_unknown_node_is_a_contract_error():
    ids, t = np.array([1, 2]), np.array([0, 1])
    with pytest.raises(ContractError, match=r"edges to unknown node ids \[3, 7\]"):
        tracklets(ids, t, np.array([[1, 2], [2, 3], [7, 1]]))


def test_a_tracking_result_cuts_a_division_into_three_tracks_with_the_mother_as_parent():
    # node 1 (t 0) -> node 2 (t 1), which divides into 3 and 4 (t 2); node 5 (t 0) stands alone
    nodes = {"id": np.array([4, 3, 2, 1, 5]), "t": np.array([2, 2, 1, 0, 0])}
    edges = {"source": np.array([1, 2, 2]), "target": np.array([2, 3, 4])}
    result = tracking_result(nodes, edges)
    assert result["nodes"] is nodes and result["edges"] is edges
    assert result["track_id"].tolist() == [4, 3, 1, 1, 2]
    assert set(result["tracks"]) == set(TRACK_COLUMNS)
    rows = list(zip(*(result["tracks"][key].tolist() for key in TRACK_COLUMNS)))
    assert rows == [(1, 0, 1, 0), (2, 0, 0, 0), (3, 2, 2, 1), (4, 2, 2, 1)]
    assert all(column.dtype == np.int64 for column in result["tracks"].values())


def test_a_tracking_result_without_nodes_has_an_empty_tracks_table():
    empty = np.zeros(0, np.int64)
    result = tracking_result({"id": empty, "t": empty}, {"source": empty, "target": empty})
    assert result["track_id"].size == 0
    assert {key: column.shape for key, column in result["tracks"].items()} == {key: (0,) for key in TRACK_COLUMNS}
