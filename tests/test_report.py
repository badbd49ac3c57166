"""The ``nahual report`` command and :mod:`nahual.report`: pictures and summary of a processed image."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("zarr")

from nahual.cli import main
from nahual.demo import make_demo, write_demo
from nahual.report import lineage_roots, outlines, plane, write_report
from nahual.stream import write_image, write_labels

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    data = make_demo(seed=0)
    path = write_demo(tmp_path_factory.mktemp("report") / "demo.zarr", data)
    return path, data


def png_size(path) -> tuple[int, int]:
    """(width, height) from a PNG's header."""
    header = path.read_bytes()[:24]
    assert header.startswith(PNG), path
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


def test_cli_draws_outlines_tracks_and_summary_and_prints_the_summary(demo, tmp_path, capsys):
    path, data = demo
    status = main(
        [
            "report",
            str(path),
            str(tmp_path / "out"),
            "--labels",
            "ground_truth",
            "--tracks",
            "ground_truth",
            "--frames",
            "3",
        ]
    )
    assert status == 0
    summary = json.loads(capsys.readouterr().out)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["outlines.png", "summary.png", "tracks.png"]
    width, height = png_size(tmp_path / "out" / "outlines.png")
    assert width > 2 * height  # three panels side by side
    for name in ("tracks", "summary"):
        assert (tmp_path / "out" / f"{name}.png").stat().st_size > 10_000
    assert summary["frames"] == data.labels.shape[0]
    assert summary["objects_per_frame"] == [len(np.unique(frame)) - 1 for frame in data.labels]
    assert summary["divisions"] == data.divisions and sum(summary["divisions_per_frame"]) == data.divisions
    first_tracks = int((data.tracks["parent"] == 0).sum())
    assert summary["lineages"] == first_tracks


def test_labels_alone_give_outlines_and_summary_without_tracks(demo, tmp_path):
    path, data = demo
    summary = write_report(path, tmp_path / "out", labels="ground_truth", frames=20)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["outlines.png", "summary.png"]
    assert "divisions" not in summary
    width, height = png_size(tmp_path / "out" / "outlines.png")
    assert width >= data.labels.shape[0] * height * 0.9  # one panel per frame when fewer frames than asked


def test_nothing_to_draw_and_missing_outputs_fail_with_one_line(demo, tmp_path, capsys):
    path, _ = demo
    assert main(["report", str(path), str(tmp_path / "out")]) == 1
    assert "nothing to draw" in capsys.readouterr().err
    assert main(["report", str(path), str(tmp_path / "out"), "--tracks", "missing"]) == 1
    assert "no GEFF graph" in capsys.readouterr().err
    assert main(["report", str(path), str(tmp_path / "out"), "--labels", "ground_truth", "--channel", "5"]) == 1
    assert "--channel 5 does not exist" in capsys.readouterr().err


def test_a_3d_image_is_shown_as_its_maximum_projection(tmp_path):
    image = np.zeros((2, 1, 5, 32, 32), np.uint16)
    image[:, 0, 3, 10:20, 10:20] = 1000
    path = write_image(tmp_path / "stack.zarr", image, "tczyx")
    labels = np.zeros((2, 5, 32, 32), np.uint32)
    labels[:, 3, 10:20, 10:20] = 1
    write_labels(path, "cells", labels, "tzyx")
    summary = write_report(path, tmp_path / "out", labels="cells")
    assert summary["objects_per_frame"] == [1, 1]
    projected = plane(image, "tczyx", 1)
    assert projected.shape == (32, 32) and projected[15, 15] == 1000 and projected[0, 0] == 0


def test_outlines_are_the_object_pixels_on_a_border():
    labels = np.zeros((8, 8), np.uint32)
    labels[1:7, 1:5] = 1
    labels[1:7, 5:7] = 2
    edge = outlines(labels)
    assert not edge[labels == 0].any()  # background is never an outline
    assert edge[1, 1] and edge[6, 6] and not edge[2:6, 2:4].any()  # object 1's inside is not
    assert edge[3, 4] and edge[3, 5]  # both sides of the border between 1 and 2


def test_lineage_roots_follow_parents_to_the_first_ancestor():
    ids = np.array([1, 2, 3, 4, 5, 6])
    edges = np.array([[1, 2], [2, 3], [2, 4], [5, 6]])  # 2 divides into 3 and 4
    assert lineage_roots(ids, edges).tolist() == [1, 1, 1, 1, 5, 5]
    assert lineage_roots(ids, np.zeros((0, 2), np.int64)).tolist() == ids.tolist()


def test_tracks_are_drawn_with_the_label_image_their_graph_links_to(demo):
    from nahual.report import _linked_labels
    from nahual.stream import read_tracks

    path, data = demo
    _, _, meta = read_tracks(path, "ground_truth")
    linked = _linked_labels(path, "ground_truth", meta)
    assert linked is not None and linked.label_name == "ground_truth"
    np.testing.assert_array_equal(linked.array[...], data.labels)
    missing = {"related_objects": [{"type": "labels", "path": "../../labels/x"}]}
    assert _linked_labels(path, "ground_truth", missing) is None
