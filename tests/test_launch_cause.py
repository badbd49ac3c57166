"""The line that says why a tool or a server failed, out of what it printed (real outputs, trimmed)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from nahual.errors import LaunchError
from nahual.launcher._cause import ErrorWatch, cause_details, cause_line
from nahual.launcher._tools import probe, run_tool

NIX_28 = """\
error: attribute 'pythonPath' missing

       at /nix/store/lwlyz8svk0mbfadfa4fr5bbcgj87p1i7-source/flake.nix:6:19:

            5|       args = [ "-c" "echo > $out" ]; outputs = [ "out" ];
            6|       shellHook = settings.pythonPath;
             |                   ^
            7|     };
(use '--show-trace' to show detailed location information)
"""

NIX_NESTED = """\
warning: Git tree '/src/nahual' is dirty
error:
       … while calling the 'derivationStrict' builtin

         at <nix/derivation-internal.nix>:9:12:

       … while evaluating attribute 'shellHook' of derivation 'nahual-broken-shell'

       error: attribute 'pythonPath' missing
       at /nix/store/x-source/flake.nix:6:19:
(use '--show-trace' to show detailed location information)
"""

NIX_IGNORED = """\
building '/nix/store/p783hbssdld79lbxm6yzi5x1z4dv0lwn-y-env.drv'...
error (ignored): error: cannot find flake 'flake:nixpkgs' in the flake registries
\x1b[31;1merror:\x1b[0m flake 'path:/tmp/f' does not provide attribute 'devShells.x86_64-linux.nope' or 'nope'
"""

SERVER_THEN_NOISE = """\
loading weights
nahual serve: error: --preload cells failed: FileNotFoundError: weights.pt not found
Exception ignored in: <function Pool.__del__ at 0x7f>
Traceback (most recent call last):
  File "pool.py", line 3, in __del__
RuntimeError: cannot schedule new futures after interpreter shutdown
"""

TRACEBACK = """\
Traceback (most recent call last):
  File "x.py", line 1, in <module>
    import torch
ModuleNotFoundError: No module named 'torch'

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "x.py", line 3, in <module>
    raise SystemExit(load())
  File "x.py", line 9, in load
    raise ValueError(
ValueError: cellpose needs torch; install the cuda extra
"""


@pytest.mark.parametrize(
    ("text", "cause"),
    [
        (NIX_28, "attribute 'pythonPath' missing"),
        (NIX_NESTED, "attribute 'pythonPath' missing"),
        (NIX_IGNORED, "flake 'path:/tmp/f' does not provide attribute 'devShells.x86_64-linux.nope' or 'nope'"),
        (SERVER_THEN_NOISE, "--preload cells failed: FileNotFoundError: weights.pt not found"),
        (TRACEBACK, "ValueError: cellpose needs torch; install the cuda extra"),
        ("error: The lockfile at `uv.lock` needs to be updated, but `--locked` was provided.\n", "The lockfile"),
        ("  \u00d7 No solution found when resolving:\n  ╰─▶ Because foo was not found\n", "╰─▶ Because foo"),
        ("\n\n", "(no output)"),
    ],
    ids=["nix-2.8", "nix-nested", "nix-ignored", "server-noise", "traceback", "uv-error", "uv-fancy", "empty"],
)
def test_cause_line(text: str, cause: str) -> None:
    assert cause_line(text).startswith(cause)


def test_cause_details_is_the_error_block_without_the_hint() -> None:
    details = cause_details(NIX_28, 15)
    assert details.splitlines()[0] == "error: attribute 'pythonPath' missing"
    assert "shellHook = settings.pythonPath;" in details
    assert "--show-trace" not in details
    assert "warning: Git tree" not in cause_details(NIX_NESTED, 15)  # before the block
    assert cause_details("a\nb\nc\n", 2) == "b\nc"  # no block: the last lines


def test_run_tool_puts_the_cause_first(tmp_path: Path) -> None:
    (tmp_path / "nix-said").write_text(NIX_28)
    script = "import sys; sys.stderr.write(open(sys.argv[1]).read()); sys.exit(1)"
    with pytest.raises(LaunchError) as caught:
        run_tool([sys.executable, "-c", script, str(tmp_path / "nix-said")], "building nix:path:x#default")
    first, command, *details = str(caught.value).splitlines()
    assert first == "building nix:path:x#default failed (exit 1): attribute 'pythonPath' missing"
    assert command.startswith("command: ")
    assert "flake.nix:6:19:" in "\n".join(details)
    assert "--show-trace" not in "\n".join(details)
    with pytest.raises(LaunchError, match=r"^uv sync: cannot run /no/such/tool: "):
        run_tool(["/no/such/tool"], "uv sync")


def test_probe_answers_in_one_line() -> None:
    assert probe([sys.executable, "-c", "print('first'); print('answer')"]) == (True, "answer")
    ok, why = probe([sys.executable, "-c", "import no_such_module_xyz"])
    assert not ok and why == "ModuleNotFoundError: No module named 'no_such_module_xyz' (exit 1)"
    ok, why = probe([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.2)
    assert not ok and why.endswith("did not finish within 0.2 s")


def test_error_watch_sees_only_new_complete_lines(tmp_path: Path) -> None:
    log = tmp_path / "s.log"
    log.write_bytes(b"nahual serve: error: from an earlier run\n")
    watch = ErrorWatch(log, offset=log.stat().st_size)
    assert watch.poll() is None
    with log.open("ab") as handle:
        handle.write(b"starting\nnahual serve: error: bad ")
        handle.flush()
        assert watch.poll() is None  # half a line
        handle.write(b"params\n")
        handle.flush()
    seen = watch.poll()
    assert seen is not None and watch.poll() == seen
