"""``nahual apply`` from the command line: mistakes refused before the first request, tables written."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")
anndata = pytest.importorskip("anndata")

from conftest import ROOT  # noqa: E402

from nahual.cli import main  # noqa: E402
from nahual.stream import write_image, write_labels  # noqa: E402


@pytest.fixture
def image(tmp_path):
    data = np.zeros((2, 2, 64, 64), np.uint16)
    data[:, 0, 10:20, 10:20] = 100
    data[:, 0, 40:50, 30:45] = 200
    data[:, 1] = 7
    path = write_image(tmp_path / "img.zarr", data, "tcyx", chunks=(1, 1, 32, 32))
    labels = np.zeros((2, 64, 64), np.uint32)
    labels[:, 10:20, 10:20] = 1
    labels[:, 40:50, 30:45] = 2
    write_labels(path, "seg", labels, "tyx")
    return path


MEASURE = ("--model", "stream_models:Measure", "--labels", "seg", "--channel", "0")


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main(["apply", *argv, "--local", "--quiet"])
    return code, capsys.readouterr().err


def test_features_table_per_object_and_frame(image, capsys):
    code, err = run(capsys, str(image), "feat", "--model", "stream_models:Measure", "--labels", "seg", "--channel", "0")
    assert code == 0, err
    table = anndata.io.read_elem(zarr.open_group(f"{image}/tables/feat", mode="r"))
    assert table.obs["label"].tolist() == [1, 2, 1, 2] and table.obs["t"].tolist() == [0, 0, 1, 1]
    assert list(table.var_names) == ["area", "mean"]
    np.testing.assert_array_equal(table.X, [[100, 100], [150, 200], [100, 100], [150, 200]])
    assert table.uns["nahual"]["model"] == "stream_models:Measure"


def test_label_image_input_with_an_image_model(image, capsys):
    code, err = run(capsys, f"{image}/labels/seg", "feat2", "--model", "stream_models:Measure", "--channel", "1")
    assert code == 0, err
    table = anndata.io.read_elem(zarr.open_group(f"{image}/tables/feat2", mode="r"))
    np.testing.assert_array_equal(table.X[:, 1], [7, 7, 7, 7])


def test_embeddings_one_row_per_block(image, capsys):
    code, err = run(
        capsys, str(image), "emb", "--model", "stream_models:Embed", "--channel", "1", "--tile", "y=32,x=32"
    )
    assert code == 0, err
    table = anndata.io.read_elem(zarr.open_group(f"{image}/tables/emb", mode="r"))
    assert table.X.shape == (8, 2) and table.X.dtype == np.float32
    assert table.obs["block"].tolist() == list(range(8))
    np.testing.assert_allclose(table.X, [[7, 0]] * 8)


def test_kind_array_writes_predictions(image, capsys):
    code, err = run(capsys, str(image), "twice", "--model", "stream_models:Double", "--kind", "array", "--channel", "1")
    assert code == 0, err
    written = zarr.open_group(f"{image}/predictions/twice", mode="r")["0"]
    assert written.shape == (2, 1, 64, 64) and written.dtype == np.float32
    np.testing.assert_array_equal(written[...], 14)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "stream_models:Blobs"], "choose one with the channel option (--channel N"),
        (["--model", "stream_models:Blobs", "--channel", "0", "--tile", "y=big"], "tile takes AXIS=SIZE"),
        (["--model", "stream_models:Blobs", "--params", "[1]"], "--params must be a JSON object"),
        (["--model", "stream_models:Blobs", "--channel", "0", "--shard", "3/3"], "shard takes I/N"),
        (["--model", "stream_models:Embed", "--channel", "0", "--kind", "tracks"], "tracks need the whole series"),
        (["--model", "no_such_module:Model"], "cannot be imported"),
    ],
)
def test_mistakes_are_one_line_errors_before_any_output(image, capsys, argv, message):
    code, err = run(capsys, str(image), "out", *argv)
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1, err
    group = zarr.open_group(str(image), mode="r")
    assert "out" not in group.get("labels", {}) and "out" not in group.get("tables", {})


def test_done_marker_written_after_success_and_when_complete_already(image, capsys, tmp_path):
    done = tmp_path / "markers" / "deep" / "feat.json"
    code, err = run(capsys, str(image), "feat", *MEASURE, "--done", str(done))
    assert code == 0, err
    summary = json.loads(done.read_text())
    assert done.read_text().count("\n") == 1
    assert summary["output"] == "feat" and summary["blocks"] == summary["processed"] == 2
    assert summary["final"] == {"rows": 4}
    done.unlink()
    code, err = run(capsys, str(image), "feat", *MEASURE, "--done", str(done))
    assert code == 0, err
    assert json.loads(done.read_text())["processed"] == 0 and json.loads(done.read_text())["skipped"] == 2
    assert not [p.name for p in done.parent.iterdir() if p.name != done.name]  # no temporary file left


def test_done_marker_not_written_on_failure(image, capsys, tmp_path):
    refused = tmp_path / "refused.json"
    code, err = run(capsys, str(image), "out", "--model", "stream_models:Blobs", "--done", str(refused))
    assert code == 1 and "channel option" in err and not refused.exists()
    failed = tmp_path / "failed.json"
    argv = ("--model", "models_for_tests:Fail", "--kind", "labels", "--channel", "0", "--done", str(failed))
    code, err = run(capsys, str(image), "out", *argv)
    assert code == 1 and not failed.exists(), err
    assert re.search(r"error: block 0 \(t=0 c=0\) failed on local: .*boom$", err.strip()), err
    assert len(err.strip().splitlines()) == 1


def test_too_few_channels_names_both_counts(tmp_path, capsys):
    path = write_image(tmp_path / "one.zarr", np.zeros((1, 16, 16), np.uint8), "tyx")
    code, err = run(capsys, str(path), "out", "--model", "stream_models:TwoChannels")
    assert code == 1 and "model expects at least 2 channels; the store has 1" in err


def test_plain_array_without_axes(tmp_path, capsys):
    group = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    group.create_array("raw", shape=(2, 16, 16), chunks=(1, 16, 16), dtype="float32")[...] = 1.0
    code, err = run(capsys, str(tmp_path / "plain.zarr" / "raw"), "seg", "--model", "stream_models:Blobs")
    assert code == 1 and "--axes" in err
    code, err = run(
        capsys, str(tmp_path / "plain.zarr" / "raw"), "seg", "--model", "stream_models:Blobs", "--axes", "tyx"
    )
    assert code == 0, err
    labels = zarr.open_group(str(tmp_path / "plain.zarr" / "labels" / "seg"), mode="r")["0"][...]
    assert labels.shape == (2, 16, 16) and set(np.unique(labels)) == {1, 2}


def test_stitch_and_export_report_missing_things(image, capsys):
    assert main(["stitch", str(image), "nothing"]) == 1
    assert "no run of 'nothing'" in capsys.readouterr().err
    assert main(["export", "ctc", str(image), str(image) + "-ctc"]) == 1
    assert "choose one with --tracks" in capsys.readouterr().err


def test_progress_lines_when_not_on_a_terminal():
    import io

    from nahual.stream._progress import Progress

    out = io.StringIO()
    progress = Progress(3, "seg", stream=out, interval=0.0)
    for _ in range(3):
        progress.advance()
    lines = out.getvalue().splitlines()
    assert [line.split()[:2] for line in lines] == [["seg", "1/3"], ["seg", "2/3"], ["seg", "3/3"]]
    assert all("/s" in line and "ETA" in line for line in lines)
    quiet = io.StringIO()
    Progress(1, "x", stream=quiet, enabled=False).advance()
    assert quiet.getvalue() == ""


def test_progress_bar_on_a_terminal(image):
    """With stderr on a terminal, ``nahual apply`` draws a bar; the last drawing ends the line."""
    primary, secondary = pty.openpty()
    try:
        process = subprocess.run(
            [sys.executable, "-m", "nahual", "apply", str(image), "feat", "--local", *MEASURE],
            stderr=secondary,
            stdout=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(ROOT / "tests")},
            timeout=120,
            check=False,
        )
        shown = os.read(primary, 65536).decode(errors="replace")
    finally:
        os.close(primary)
        os.close(secondary)
    assert process.returncode == 0, shown
    assert re.search(r"^feat \[#{24}\] 2/2 +[0-9.]+/s +ETA 0m00s\r\n", shown), repr(shown)
