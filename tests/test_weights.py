"""The weights cache: where it is, the one-line error for a missing weight, fetch (against a loopback
HTTP server: good, bad checksum, interrupted), add, the manifest, and the ``nahual weights`` commands."""

from __future__ import annotations

import hashlib
import io
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from nahual import Model
from nahual.cli import main
from nahual.errors import ConfigError, WeightsError
from nahual.weights import (
    MANIFEST,
    WeightSource,
    add,
    checksum,
    fetch,
    list_weights,
    model_dir,
    weight_path,
    weights_dir,
)

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB: several read chunks would show a half-written file
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


def _zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


ARCHIVE = _zip({"tiny/config.yaml": b"d_model: 4\n", "tiny/model.pt": b"weights", "tiny/sub/extra.txt": b"x"})
EVIL = _zip({"../escape.txt": b"boom"})


class _Handler(BaseHTTPRequestHandler):
    """``/good``, ``/zip``, ``/evil``; ``/short`` promises the whole payload and closes halfway."""

    requests: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).requests.append(self.path)
        body = {"/good": PAYLOAD, "/short": PAYLOAD, "/zip": ARCHIVE, "/evil": EVIL}.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if self.path == "/short" else body)
        if self.path == "/short":
            self.close_connection = True

    def log_message(self, *args: object) -> None:
        """Quiet: pytest shows stderr of failing tests only."""


@pytest.fixture
def http() -> Iterator[str]:
    """Base URL of a loopback HTTP server in a thread; shut down at teardown."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    _Handler.requests.clear()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty cache."""
    root = tmp_path / "cache"
    monkeypatch.setenv("NAHUAL_WEIGHTS", str(root))
    return root


class Weighted(Model):
    """A model that declares weights; tests point its sources at the loopback server."""

    name = "weighted"
    weights: ClassVar[dict[str, WeightSource]] = {}


MODEL_REF = f"{__name__}:Weighted"


def _leftovers(model: str) -> list[str]:
    folder = model_dir(model)
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_weights_dir_follows_nahual_weights_then_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert weights_dir() == tmp_path / "cache"
    monkeypatch.delenv("NAHUAL_WEIGHTS")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights_dir() == tmp_path / "xdg" / "nahual" / "weights"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert weights_dir() == tmp_path / "home" / ".cache" / "nahual" / "weights"


def test_missing_weight_is_one_line_naming_model_name_path_and_commands(cache: Path) -> None:
    with pytest.raises(WeightsError) as caught:
        weight_path("mymodel", "cyto3")
    message = str(caught.value)
    assert "\n" not in message
    assert isinstance(caught.value, ConfigError)
    for part in ("'mymodel'", "'cyto3'", str(cache / "mymodel" / "cyto3"), "nahual weights fetch mymodel cyto3"):
        assert part in message
    assert "nahual weights add mymodel cyto3 PATH" in message


@pytest.mark.parametrize("name", ["", "..", ".hidden", "a/b", "x.partial-12"])
def test_weight_names_must_be_plain_file_names(name: str) -> None:
    with pytest.raises(WeightsError, match="plain file name"):
        weight_path("mymodel", name)


def test_fetch_verifies_and_records_then_skips_a_verified_copy(http: str) -> None:
    source = WeightSource(f"{http}/good", DIGEST, size=len(PAYLOAD))
    stream = io.StringIO()
    path = fetch("mymodel", "cyto3", source, stream=stream)
    assert path == weight_path("mymodel", "cyto3")
    assert path.read_bytes() == PAYLOAD
    assert _leftovers("mymodel") == [MANIFEST, "cyto3"]
    assert stream.getvalue().splitlines()[0] == "fetching mymodel/cyto3 (1.0 MB)"
    assert stream.getvalue().rstrip().endswith("done")
    [entry] = list_weights(["mymodel"])
    assert (entry.name, entry.present, entry.size, entry.sha256, entry.origin) == (
        "cyto3",
        True,
        len(PAYLOAD),
        DIGEST,
        f"{http}/good",
    )
    fetch("mymodel", "cyto3", source, stream=stream)
    assert _Handler.requests == ["/good"]
    fetch("mymodel", "cyto3", source, force=True, stream=stream)
    assert _Handler.requests == ["/good", "/good"]


def test_bad_checksum_leaves_nothing(http: str) -> None:
    source = WeightSource(f"{http}/good", "0" * 64)
    with pytest.raises(WeightsError, match=f"has sha256 {DIGEST}, expected 0{{64}}; nothing was kept"):
        fetch("mymodel", "cyto3", source, stream=io.StringIO())
    assert _leftovers("mymodel") == []


def test_interrupted_transfer_leaves_nothing_and_says_so(http: str) -> None:
    source = WeightSource(f"{http}/short", DIGEST)
    with pytest.raises(WeightsError, match=f"interrupted: got {len(PAYLOAD) // 2} of {len(PAYLOAD)} bytes"):
        fetch("mymodel", "cyto3", source, stream=io.StringIO())
    assert _leftovers("mymodel") == []


def test_a_failed_refetch_keeps_the_old_copy(http: str) -> None:
    fetch("mymodel", "cyto3", WeightSource(f"{http}/good", DIGEST), stream=io.StringIO())
    with pytest.raises(WeightsError, match="interrupted"):
        fetch("mymodel", "cyto3", WeightSource(f"{http}/short", "1" * 64), stream=io.StringIO())
    assert weight_path("mymodel", "cyto3").read_bytes() == PAYLOAD
    assert _leftovers("mymodel") == [MANIFEST, "cyto3"]


def test_unreachable_source_is_one_line(http: str) -> None:
    with pytest.raises(WeightsError, match="failed after 0 bytes") as caught:
        fetch("mymodel", "cyto3", WeightSource(f"{http}/missing", DIGEST), stream=io.StringIO())
    assert "\n" not in str(caught.value)
    assert _leftovers("mymodel") == []


def test_archive_unpacks_into_a_folder_unwrapping_its_top_folder(http: str) -> None:
    digest = hashlib.sha256(ARCHIVE).hexdigest()
    path = fetch("trackastra", "tiny", WeightSource(f"{http}/zip", digest, archive=True), stream=io.StringIO())
    assert sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()) == [
        "config.yaml",
        "model.pt",
        "sub/extra.txt",
    ]
    assert _leftovers("trackastra") == [MANIFEST, "tiny"]
    member = WeightSource(f"{http}/zip", digest, filename="tiny/sub", archive=True)
    sub = fetch("trackastra", "sub", member, stream=io.StringIO())
    assert [p.name for p in sub.iterdir()] == ["extra.txt"]


def test_archive_escaping_its_folder_is_refused(http: str) -> None:
    source = WeightSource(f"{http}/evil", hashlib.sha256(EVIL).hexdigest(), archive=True)
    with pytest.raises(WeightsError, match="outside its folder"):
        fetch("trackastra", "evil", source, stream=io.StringIO())
    assert _leftovers("trackastra") == []
    assert not (weights_dir() / "escape.txt").exists()


def test_progress_bar_on_a_terminal(http: str) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    fetch("mymodel", "cyto3", WeightSource(f"{http}/good", DIGEST), stream=stream)
    assert stream.getvalue().startswith("\rmymodel/cyto3 [########################] 1.0 MB/1.0 MB")


def test_add_copies_a_file_or_folder_and_records_its_checksum(tmp_path: Path) -> None:
    own = tmp_path / "mine.pt"
    own.write_bytes(PAYLOAD)
    path = add("mymodel", "mine", own)
    assert path.read_bytes() == PAYLOAD
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.yaml").write_text("a: 1\n")
    (folder / "sub" / "model.pt").write_bytes(b"w")
    copied = add("trackastra", "own", folder)
    assert checksum(copied) == checksum(folder)
    entries = {(e.model, e.name): e for e in list_weights(["mymodel", "trackastra"])}
    assert entries["mymodel", "mine"].sha256 == DIGEST
    assert entries["mymodel", "mine"].origin == f"added from {own}"
    assert entries["trackastra", "own"].present
    assert _leftovers("trackastra") == [MANIFEST, "own"]
    with pytest.raises(WeightsError, match="does not exist"):
        add("mymodel", "gone", tmp_path / "gone.pt")


def test_cli_fetch_list_and_path_use_the_models_declared_weights(
    http: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], cache: Path
) -> None:
    monkeypatch.setattr(Weighted, "weights", {"w1": WeightSource(f"{http}/good", DIGEST, size=len(PAYLOAD))})
    assert main(["weights", "list", MODEL_REF]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0] == f"weights cache: {cache}"
    assert listed[2].split()[:5] == [MODEL_REF, "w1", "no", "1.0", "MB"]
    assert main(["weights", "fetch", MODEL_REF]) == 0
    assert capsys.readouterr().out.strip() == str(cache / MODEL_REF / "w1")
    assert main(["weights", "list", MODEL_REF]) == 0
    assert capsys.readouterr().out.splitlines()[2].split()[:6] == [MODEL_REF, "w1", "yes", "1.0", "MB", DIGEST[:12]]
    assert main(["weights", "path"]) == 0
    assert capsys.readouterr().out.strip() == str(cache)
    assert main(["weights", "path", MODEL_REF, "w1"]) == 0
    assert capsys.readouterr().out.strip() == str(cache / MODEL_REF / "w1")
    assert main(["weights", "path", MODEL_REF, "other"]) == 1
    assert "nahual weights fetch" in capsys.readouterr().err
    assert main(["weights", "fetch", MODEL_REF, "nope"]) == 1
    assert "declares no weights 'nope' to fetch (known: w1)" in capsys.readouterr().err


def test_a_source_without_a_published_checksum_records_what_it_got(http: str) -> None:
    stream = io.StringIO()
    fetch("mymodel", "cyto3", WeightSource(f"{http}/good", ""), stream=stream)
    assert f"its source publishes no checksum; recorded sha256 {DIGEST}" in stream.getvalue()
    assert list_weights(["mymodel"])[0].sha256 == DIGEST
    fetch("mymodel", "cyto3", WeightSource(f"{http}/good", ""), stream=stream)
    assert _Handler.requests == ["/good"]  # present and recorded: not fetched again
