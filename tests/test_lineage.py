"""Tests of nahual.lineage: the node-id format every tracker and writer shares, and bad edges."""

from __future__ import annotations

import numpy as np
import pytest

from nahual.demo import make_demo
from nahual.errors import ContractError
from nahual.lineage import NODE_ID_STRIDE, tracklets


def test_node_ids_are_time_times_the_stride_plus_the_label():
    assert NODE_ID_STRIDE == 2**32
    truth = make_demo(seed=0)
    assert np.array_equal(truth.nodes["id"], truth.nodes["t"] * NODE_ID_STRIDE + truth.nodes["label"])


def test_an_edge_to_an_unknown_node_is_a_contract_error():
    ids, t = np.array([1, 2]), np.array([0, 1])
    with pytest.raises(ContractError, match=r"edges to unknown node ids \[3, 7\]"):
        tracklets(ids, t, np.array([[1, 2], [2, 3], [7, 1]]))
