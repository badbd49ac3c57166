"""Environment launcher layer: the private per-user runtime directory and unique ipc addresses.

Sockets, ready files and server logs live in one directory that only the
current user can enter (mode 0700), so that no other user on a shared node
can connect to a model server or read its log. The directory is, in order:

1. ``$NAHUAL_RUNTIME_DIR`` (tests, or sites that want a fixed place);
2. ``$XDG_RUNTIME_DIR/nahual`` (per-login tmpfs on systemd machines);
3. ``nahual-<uid>`` in the system temporary directory.
"""

from __future__ import annotations

import os
import secrets
import stat
import tempfile
from pathlib import Path

from .._nng import IPC_PATH_MAX
from ..errors import ConfigError

__all__ = ["IPC_PATH_MAX", "RuntimeFiles", "ipc_path", "private_ipc_address", "runtime_dir"]


def runtime_dir() -> Path:
    """Return the private runtime directory, creating it with mode 0700.

    Returns
    -------
    Path
        An existing directory owned by the current user that no one else can enter.

    Raises
    ------
    ConfigError
        If the directory exists but belongs to another user or is open to others:
        nahual refuses to put sockets where someone else could reach them.
    """
    chosen = os.environ.get("NAHUAL_RUNTIME_DIR")
    if chosen:
        path = Path(chosen)
    elif os.environ.get("XDG_RUNTIME_DIR") and Path(os.environ["XDG_RUNTIME_DIR"]).is_dir():
        path = Path(os.environ["XDG_RUNTIME_DIR"]) / "nahual"
    else:
        path = Path(tempfile.gettempdir()) / f"nahual-{os.getuid()}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.getuid():
        raise ConfigError(f"runtime directory {path} must belong to uid {os.getuid()}, found uid {info.st_uid}")
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise ConfigError(
            f"runtime directory {path} must be private (mode 0700), found mode {stat.S_IMODE(info.st_mode):04o}"
        )
    return path


def ipc_path(address: str) -> Path | None:
    """The socket file of an ``ipc://`` address, or None for other transports."""
    return Path(address[len("ipc://") :]) if address.startswith("ipc://") else None


def private_ipc_address() -> str:
    """Return a fresh ``ipc://`` address in the runtime directory, unique per server.

    The name holds this process id and random bits, so concurrent launchers
    (threads, processes, Snakemake jobs) never collide.

    Raises
    ------
    ConfigError
        If the path would exceed the kernel's limit for socket paths.
    """
    return RuntimeFiles.create().address


class RuntimeFiles:
    """The files that belong to one launched server: socket, ready file, log and record.

    Parameters
    ----------
    stem : Path
        Runtime directory plus a unique name; each file adds its suffix.
    """

    def __init__(self, stem: Path) -> None:
        self.stem = stem

    @classmethod
    def create(cls) -> RuntimeFiles:
        """Pick a unique stem in :func:`runtime_dir` (short, to fit the socket path limit)."""
        stem = runtime_dir() / f"s{os.getpid()}-{secrets.token_hex(4)}"
        socket = f"{stem}.sock"
        if len(socket.encode()) > IPC_PATH_MAX:
            raise ConfigError(
                f"ipc socket path must be at most {IPC_PATH_MAX} bytes, found {len(socket.encode())} ({socket}); "
                "set NAHUAL_RUNTIME_DIR to a shorter directory"
            )
        return cls(stem)

    @property
    def address(self) -> str:
        """``ipc://`` address of the socket file."""
        return f"ipc://{self.stem}.sock"

    @property
    def ready_file(self) -> Path:
        """File the server creates once it is bound and its preload is loaded."""
        return self.stem.with_name(self.stem.name + ".ready")

    @property
    def record_file(self) -> Path:
        """What is known of the server (pid, environment, model, exit status), for ``nahual logs``."""
        return self.stem.with_name(self.stem.name + ".json")

    @property
    def log_file(self) -> Path:
        """Where the server's stdout and stderr go (kept after it stops, for post-mortems)."""
        return self.stem.with_name(self.stem.name + ".log")
