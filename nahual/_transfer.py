"""Moving weight files: download with a progress bar and checks, unpack zips, install by rename, sizes, digests.

Layer: model zoo support (stdlib only), under :mod:`nahual.weights`. Every
write goes to a scratch name first and is renamed when complete and checked,
so that an interrupted or corrupt transfer never leaves a file that looks whole.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from .errors import WeightsError

if TYPE_CHECKING:
    from .weights import WeightSource

__all__ = ["checksum", "disk_size", "download", "format_size", "install", "remove", "unpack"]

_CHUNK = 1 << 20


def checksum(path: Path) -> str:
    """sha256 of a file; of a folder, sha256 over its files' relative paths and digests, in sorted order."""
    path = Path(path)
    if path.is_file():
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while block := handle.read(_CHUNK):
                digest.update(block)
        return digest.hexdigest()
    combined = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        combined.update(f"{file.relative_to(path).as_posix()}\0{checksum(file)}\n".encode())
    return combined.hexdigest()


def format_size(size: int | None) -> str:
    """Bytes for people: ``26.6 MB``, ``1.23 GB``; ``?`` when unknown."""
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def download(source: WeightSource, partial: Path, label: str, timeout: float, stream: TextIO) -> str:
    """Stream ``source.url`` into ``partial``, checking the byte count and the sha256; returns the sha256."""
    digest = hashlib.sha256()
    got = 0
    try:
        with urllib.request.urlopen(source.url, timeout=timeout) as response, partial.open("wb") as out:
            length = response.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else source.size
            bar = _Bar(label, expected, stream)
            while block := response.read(_CHUNK):
                out.write(block)
                digest.update(block)
                got += len(block)
                bar.update(got)
            bar.finish(got)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise WeightsError(f"downloading {label} from {source.url} failed after {got} bytes: {reason}") from exc
    if expected is not None and got != expected:
        raise WeightsError(
            f"downloading {label} from {source.url} was interrupted: got {got} of {expected} bytes; nothing was kept"
        )
    if not source.sha256:
        print(f"{label}: its source publishes no checksum; recorded sha256 {digest.hexdigest()}", file=stream)
    elif digest.hexdigest() != source.sha256.lower():
        raise WeightsError(
            f"{label} from {source.url} has sha256 {digest.hexdigest()}, expected {source.sha256}; nothing was kept"
        )
    return digest.hexdigest()


def unpack(archive: Path, dest: Path, member: str | None) -> None:
    """Extract zip ``archive`` into folder ``dest``: only ``member`` when given, else all (one top folder unwrapped).

    Raises
    ------
    WeightsError
        For a file that is not a zip, a member that is missing, or an entry that points outside ``dest``.
    """
    try:
        with zipfile.ZipFile(archive) as zipped:
            names = [n for n in zipped.namelist() if not n.endswith("/")]
            for entry in names:
                if entry.startswith(("/", "\\")) or ".." in Path(entry).parts:
                    raise WeightsError(f"archive {archive.name} holds a path outside its folder: {entry!r}")
            prefix = _archive_prefix(names, member, archive.name)
            for entry in names:
                if not entry.startswith(prefix):
                    continue
                relative = entry[len(prefix) :] or Path(entry).name
                out = dest / relative
                out.parent.mkdir(parents=True, exist_ok=True)
                with zipped.open(entry) as src, out.open("wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
    except zipfile.BadZipFile as exc:
        raise WeightsError(f"{archive.name} is not a zip archive: {exc}") from exc


def _archive_prefix(names: list[str], member: str | None, label: str) -> str:
    """The path prefix inside the archive whose contents become the weight folder."""
    if member:
        member = member.strip("/")
        if member in names:
            return member
        if any(n.startswith(member + "/") for n in names):
            return member + "/"
        raise WeightsError(f"archive {label} holds no {member!r}")
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) == 1 and all("/" in n for n in names):
        return tops.pop() + "/"
    return ""


def install(partial: Path, target: Path) -> None:
    """Rename the finished ``partial`` onto ``target``, replacing an older copy only once the new one is whole."""
    if target.is_dir() and not target.is_symlink():
        old = target.with_name(f"{target.name}.old-{os.getpid()}")
        target.rename(old)
        partial.rename(target)
        shutil.rmtree(old)
    else:
        os.replace(partial, target)


def remove(path: Path) -> None:
    """Delete a file, link or folder if it is there (scratch copies on every way out)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def disk_size(path: Path) -> int:
    """Bytes of a file, or of all files under a folder."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


class _Bar:
    """Download progress: a redrawn bar on a terminal, a start and an end line otherwise."""

    def __init__(self, label: str, total: int | None, stream: TextIO) -> None:
        self.label, self.total, self.stream = label, total, stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._start = self._last = time.monotonic()
        if not self.tty:
            print(f"fetching {label} ({format_size(total)})", file=stream, flush=True)

    def update(self, done: int) -> None:
        now = time.monotonic()
        if self.tty and now - self._last >= 0.2:
            self._last = now
            print(f"\r{self._line(done)}", end="", file=self.stream, flush=True)

    def finish(self, done: int) -> None:
        prefix = "\r" if self.tty else ""
        print(f"{prefix}{self._line(done)}  done", file=self.stream, flush=True)

    def _line(self, done: int) -> str:
        elapsed = max(time.monotonic() - self._start, 1e-9)
        rate = f"{format_size(int(done / elapsed))}/s"
        if not self.total:
            return f"{self.label} {format_size(done)}  {rate}"
        width = 24
        filled = min(width, int(width * done / self.total))
        bar = f"[{'#' * filled}{'.' * (width - filled)}]"
        return f"{self.label} {bar} {format_size(done)}/{format_size(self.total)}  {rate}"
