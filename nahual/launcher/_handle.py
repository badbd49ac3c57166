"""Environment launcher layer: the handle of one launched server and the way it is stopped.

The server runs in its own session (process group), so that stopping it
reaches everything it started: first a ``shutdown`` request, then SIGTERM,
then SIGKILL to the whole group, each with a short bounded wait. The server
is given ``--parent <our pid>`` and exits by itself when this process dies,
even by SIGKILL; handles still open at interpreter exit are stopped by an
``atexit`` hook.
"""

from __future__ import annotations

import atexit
import contextlib
import enum
import os
import shlex
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING

from .._config import Timeout, parse_timeout
from .._nng_transport import NngTransport
from ..client import Client  # before the atexit hook below: pynng's own hook (nng_fini) must run after ours
from ..errors import LaunchError, NahualError, TransportError
from ._cause import ErrorWatch, cause_line
from ._procs import group_alive
from ._runtime import ipc_path

if TYPE_CHECKING:
    from ._backends import Backend
    from ._logs import ServerRecord

__all__ = ["ServerProcess", "State", "log_tail"]

#: Seconds each stop phase (shutdown request, SIGTERM, SIGKILL) may take.
STOP_GRACE = 2.0
#: Lines of the server log quoted when it fails to start.
TAIL_LINES = 20
#: Seconds a starting server that printed its error may take to exit before it is stopped.
ERROR_GRACE = 1.0
#: Seconds :meth:`ServerProcess.exit_note` waits for the exit status of a server whose connection dropped.
EXIT_WAIT = 0.5

#: Servers started and not yet stopped (strong references: a dropped handle is still stopped at exit).
_LIVE: set[ServerProcess] = set()


class State(enum.Enum):
    """Where a handle is in its life; a stopped handle cannot be restarted."""

    STARTING = "starting"
    RUNNING = "running"
    STOPPED = "stopped"


def log_tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file, or a note that it is empty or missing."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    kept = text.strip().splitlines()[-lines:]
    return "\n".join(kept) if kept else "(empty log)"


class ServerProcess:
    """A model server started by :func:`nahual.launch`; stop it with :meth:`stop` or ``with``.

    Attributes
    ----------
    address : str
        Where the server listens.
    pid : int
        Process id of the server (the leader of its own process group).
    log_path : Path
        The server's stdout and stderr; kept after it stops.
    backend : Backend
        The environment it runs in.
    argv : list of str
        The command that started it.
    record : ServerRecord or None
        Its entry for ``nahual logs`` (set by :func:`nahual.launch`); :meth:`stop` saves its exit status there.
    devices : str or None
        The server's ``CUDA_VISIBLE_DEVICES``; None: this process's own.
    """

    def __init__(
        self,
        backend: Backend,
        argv: list[str],
        address: str,
        log_path: Path,
        ready_file: Path,
        timeout: Timeout,
        token: str | None = None,
        devices: str | None = None,
    ) -> None:
        self.backend = backend
        self.argv = argv
        self.address = address
        self.log_path = log_path
        self.ready_file = ready_file
        self.timeout = timeout
        self.token = token
        self.devices = devices
        self.state = State.STARTING
        self._lock = threading.Lock()
        self.record: ServerRecord | None = None
        self._log: IO[bytes] = log_path.open("ab")
        self._watch = ErrorWatch(log_path, os.fstat(self._log.fileno()).st_size)
        env = dict(os.environ)
        if token is not None:
            env["NAHUAL_TOKEN"] = token  # not on the command line, where ps shows it
        if devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = devices
        try:
            self._process = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            self._log.close()
            raise LaunchError(
                f"cannot start a server in environment {backend.spec}: {exc} (command: {shlex.join(argv)})"
            ) from exc
        self.pid = self._process.pid
        _LIVE.add(self)

    # -- readiness ---------------------------------------------------------

    def wait_ready(self) -> None:
        """Block until the server has created its ready file and answered ``ping``.

        Raises
        ------
        LaunchError
            If the server exits first, prints nahual's own error line and
            does not exit within :data:`ERROR_GRACE`, or the startup deadline
            passes; the server is stopped, the message's first line ends with
            the server's own error and the log's tail follows.
        """
        limit = self.timeout.startup
        deadline = None if limit is None else time.monotonic() + limit
        pause = 0.002
        while True:
            if self._exited():
                code = self.stop()
                raise self._failure(f"exited with status {code} before it was ready")
            seen = self._watch.poll()
            if seen is not None and time.monotonic() - seen > ERROR_GRACE:
                self.stop(grace=0.5)
                raise self._failure(f"failed before it was ready and did not exit within {ERROR_GRACE:g} s")
            if self.ready_file.exists() and self._ping(deadline):
                self.state = State.RUNNING
                return
            if deadline is not None and time.monotonic() >= deadline:
                self.stop()
                raise self._failure(f"did not answer ping within {limit:g} s")
            time.sleep(pause)
            pause = min(pause * 1.5, 0.01)  # a stat and a waitid per poll: cheap, and every ms counts here

    def _ping(self, deadline: float | None) -> bool:
        """One ping within what is left of the deadline; a refusal (wrong token) raises."""
        left = 5.0 if deadline is None else max(0.05, min(5.0, deadline - time.monotonic()))
        try:
            with self.client(timeout=Timeout(connect=left, request=left, startup=None)) as client:
                client.ping()
        except TransportError:
            return False
        return True

    def _failure(self, what: str) -> LaunchError:
        text = log_tail(self.log_path, 10 * TAIL_LINES)  # the error line may precede exit-time noise
        tail = "\n".join(text.splitlines()[-TAIL_LINES:])
        return LaunchError(
            f"server in environment {self.backend.spec} (pid {self.pid}) {what}: {cause_line(text)}\n"
            f"command: {shlex.join(self.argv)}\nlog {self.log_path}:\n{tail}"
        )

    # -- use ---------------------------------------------------------------

    def client(self, timeout: Timeout | float | None = None) -> Client:
        """A new :class:`nahual.Client` connected to this server (close it, or use ``with``).

        Parameters
        ----------
        timeout : Timeout, float or None
            The client's timeouts; default: the ones given to :func:`nahual.launch`.

        Notes
        -----
        Should the server die, the requests in flight fail at once with a
        :class:`~nahual.errors.TransportError` naming its exit status (or
        signal) and its log (:meth:`exit_note`).
        """
        limits = parse_timeout(self.timeout if timeout is None else timeout)
        transport = NngTransport(self.address, limits.connect, describe_loss=self.exit_note)
        return Client(timeout=limits, token=self.token, transport=transport)

    def exit_note(self, wait: float = EXIT_WAIT) -> str:
        """Why a connection to this server dropped, for error messages: how it exited, and its log.

        Parameters
        ----------
        wait : float
            Seconds to wait for the exit status (a dying process closes its sockets before it is reaped).
        """
        deadline = time.monotonic() + wait
        while (code := self._peek()) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if code is None:
            how = "closed the connection and still runs"
        elif code < 0:
            how = f"was killed by {_signal_name(-code)}"
        else:
            how = f"exited with status {code}"
        return f"server pid {self.pid} {how} (log: {self.log_path})"

    @property
    def returncode(self) -> int | None:
        """The server's exit status (negative: killed by that signal), or None while it runs."""
        return self._peek()

    # -- stopping ----------------------------------------------------------

    def stop(self, grace: float = STOP_GRACE) -> int | None:
        """Stop the server and everything in its process group; idempotent.

        Sends ``shutdown`` (when the server was ready), then SIGTERM, then
        SIGKILL, waiting at most ``grace`` seconds after each. Removes the
        ipc socket and ready file even when the server could not.

        Parameters
        ----------
        grace : float
            Seconds to wait after each step.

        Returns
        -------
        int or None
            The server's exit status (negative: killed by that signal).
        """
        with self._lock:
            if self.state is State.STOPPED:
                return self._process.returncode
            try:
                ready = self.state is State.RUNNING and not self._exited()
                if ready and self._request_shutdown(min(grace, 1.0)):
                    self._wait_exit(grace)
                for signum in (signal.SIGTERM, signal.SIGKILL):
                    if self._exited():
                        break
                    self._signal_group(signum)
                    self._wait_exit(grace)
                # The leader is gone (or unkillable); nothing it started may outlive it.
                self._signal_group(signal.SIGKILL)
                try:
                    self._process.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    pass
                else:
                    self._wait_group_gone(grace)
            finally:
                self.state = State.STOPPED
                self._log.close()
                self._remove_files()
                _LIVE.discard(self)
                if self.record is not None:
                    self.record.exit = self._process.returncode
                    with contextlib.suppress(OSError):  # a post-mortem note, not worth failing a stop for
                        self.record.save()
            return self._process.returncode

    close = stop

    def _request_shutdown(self, timeout: float) -> bool:
        """Ask the server to shut down; False when it did not accept (SIGTERM comes next)."""
        try:
            with self.client(timeout=Timeout(connect=timeout, request=timeout, startup=None)) as client:
                client.shutdown()
        except NahualError:
            return False
        return True

    def _peek(self) -> int | None:
        """The leader's exit status, without reaping it (so that its pid keeps naming the group)."""
        if self._process.returncode is not None:
            return self._process.returncode
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # reaped elsewhere (e.g. a SIGCHLD handler): status unknown
            return self._process.poll()
        if info is None:
            return None
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

    def _exited(self) -> bool:
        return self._peek() is not None

    def _wait_exit(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        pause = 0.002
        while not self._exited():
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 1.5, 0.01)
        return True

    def _wait_group_gone(self, timeout: float) -> None:
        """Wait (bounded) until the SIGKILLed members of the group have died."""
        deadline = time.monotonic() + timeout
        while group_alive(self.pid) and time.monotonic() < deadline:
            time.sleep(0.005)

    def _signal_group(self, signum: signal.Signals) -> None:
        if self._process.returncode is not None:
            return  # reaped: the pid may name someone else's group by now
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    def _remove_files(self) -> None:
        socket = ipc_path(self.address)
        for path in (socket, self.ready_file):
            if path is None:
                continue
            try:
                mode = path.lstat().st_mode
            except FileNotFoundError:
                continue
            if path is self.ready_file or stat.S_ISSOCK(mode):
                path.unlink(missing_ok=True)

    # -- context manager ---------------------------------------------------

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<ServerProcess {self.backend.spec} {self.address} pid={self.pid} {self.state.value}>"


def _signal_name(number: int) -> str:
    """``SIGKILL`` for 9; the number itself for a signal Python does not name."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


@atexit.register
def _stop_all() -> None:
    """Stop servers whose handles were never stopped, when the interpreter exits normally."""
    for server in list(_LIVE):
        server.stop(grace=1.0)
