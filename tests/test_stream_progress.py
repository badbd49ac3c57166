"""Progress: plain lines every N blocks or M seconds in logs, a bar redrawn in place on a terminal."""

from __future__ import annotations

import io

from nahual.stream._progress import LOG_LINES, Progress


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_a_line_every_n_blocks_with_rate_and_eta():
    out, clock = io.StringIO(), Clock()
    progress = Progress(10, "seg", stream=out, every=4, interval=1e9, clock=clock)
    for _ in range(10):
        clock.now += 0.5
        progress.advance()
    lines = out.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == ["4/10", "8/10", "10/10"]
    assert lines[0] == "seg 4/10  2.00/s  ETA 0m03s"
    assert "[" not in out.getvalue() and "\r" not in out.getvalue()


def test_a_log_gets_a_line_every_m_seconds_of_a_slow_run():
    out, clock = io.StringIO(), Clock()
    progress = Progress(1000, "seg", stream=out, interval=10.0, clock=clock)
    assert progress.every == 1000 // LOG_LINES
    for step in range(30):
        clock.now += 4.0 if step % 10 == 0 else 0.1
        progress.advance()
    counts = [line.split()[1] for line in out.getvalue().splitlines()]
    assert counts == ["21/1000"]  # 10 s passed at block 21; no 50 blocks since the start


def test_the_default_logs_about_twenty_lines():
    out = io.StringIO()
    progress = Progress(200, "seg", stream=out, interval=1e9)
    for _ in range(200):
        progress.advance()
    assert len(out.getvalue().splitlines()) == LOG_LINES


def test_a_terminal_gets_one_bar_redrawn_in_place():
    out, clock = Terminal(), Clock()
    progress = Progress(3, "seg", stream=out, every=1, clock=clock)
    for _ in range(3):
        clock.now += 1.0
        progress.advance()
    drawn = out.getvalue()
    assert drawn.count("\r") == 2 and drawn.endswith("\n") and drawn.count("\n") == 1
    first, second, last = drawn.replace("\n", "\r").split("\r")[:3]
    assert first == "seg [########................] 1/3  1.00/s  ETA 0m02s"
    assert last == "seg [########################] 3/3  1.00/s  ETA 0m00s"
    assert second.startswith("seg [################........] 2/3")


def test_a_terminal_is_not_redrawn_more_than_five_times_a_second():
    out, clock = Terminal(), Clock()
    progress = Progress(100, "seg", stream=out, clock=clock)
    for _ in range(99):
        clock.now += 0.01
        progress.advance()
    assert out.getvalue().count("\r") == 4  # at 0.2, 0.4, 0.6, 0.8 s


def test_disabled_progress_prints_nothing():
    out = io.StringIO()
    progress = Progress(2, "seg", stream=out, every=1, enabled=False)
    progress.advance(2)
    assert out.getvalue() == "" and progress.done == 2
