"""Tests of nahual.server._once: a key runs once, and what a late copy of it gets."""

from __future__ import annotations

import pytest

from nahual.server._once import OncePerKey


def counting(reply: str, calls: list[str]):
    def answer() -> str:
        calls.append(reply)
        return reply

    return answer


def test_a_late_copy_gets_what_repeat_makes_of_the_kept_reply_and_does_not_run():
    once = OncePerKey(60.0, lambda reply, kept: reply, lambda key, kept: f"{kept} again for {key}")
    calls: list[str] = []
    assert once.run("a", counting("first", calls)) == "first"
    assert once.run("a", counting("second", calls)) == "first again for a"
    assert once.run("b", counting("other", calls)) == "other"
    assert calls == ["first", "other"]


def test_remember_sees_the_other_kept_replies_and_a_forgotten_key_runs_again():
    seen: list[list[str]] = []

    def remember(reply: str | None, kept: list[str]) -> str | None:
        seen.append(list(kept))
        return reply if reply != "big" else None

    once = OncePerKey(60.0, remember, lambda key, kept: kept)
    calls: list[str] = []
    once.run("a", counting("small", calls))
    once.run("b", counting("big", calls))
    once.run("b", counting("big", calls))
    assert calls == ["small", "big", "big"] and seen == [[], ["small"], ["small"]]


def test_an_answered_key_is_forgotten_after_its_ttl_and_a_failed_answer_is_remembered_as_none():
    calls: list[str] = []
    expired = OncePerKey(0.0, lambda reply, kept: reply, lambda key, kept: "late")
    expired.run("a", counting("x", calls))
    assert expired.run("a", counting("y", calls)) == "y" and calls == ["x", "y"]

    given: list[object] = []
    failing = OncePerKey(60.0, lambda reply, kept: given.append(reply), lambda key, kept: "late")

    def broken() -> str:
        raise RuntimeError("the model failed")

    with pytest.raises(RuntimeError, match="the model failed"):
        failing.run("a", broken)
    assert given == [None] and failing.run("a", counting("z", calls)) == "z"


def test_keys_expire_oldest_first_and_the_younger_ones_stay(monkeypatch):
    import nahual.server._once as once_module

    clock = [100.0]
    monkeypatch.setattr(once_module.time, "monotonic", lambda: clock[0])
    once = OncePerKey(5.0, lambda reply, kept: reply, lambda key, kept: f"late {key}")
    calls: list[str] = []
    once.run("old", counting("a", calls))
    clock[0] = 103.0
    once.run("young", counting("b", calls))
    clock[0] = 106.0  # "old" answered 6 s ago, "young" 3 s ago
    assert once.run("young", counting("c", calls)) == "late young"
    assert once.run("old", counting("d", calls)) == "d"
    assert calls == ["a", "b", "d"]
