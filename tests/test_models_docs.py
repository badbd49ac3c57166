"""The "writing a model" example of docs/models.md runs: its model passes its ModelTests and lists as shown."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nahual import registry
from nahual.cli import main
from nahual.testing import ModelTests

pytest_plugins = ["pytester"]

DOC = Path(__file__).resolve().parent.parent / "docs" / "models.md"


def blocks(language: str) -> list[str]:
    """The fenced code blocks of one language in docs/models.md, in order."""
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), re.S)


def test_the_example_model_passes_the_example_contract_tests(pytester: pytest.Pytester) -> None:
    model, tests = blocks("python")[:2]
    pytester.makepyfile(bright=model, test_bright="from bright import Bright\n" + tests)
    pytester.syspathinsert()
    result = pytester.inline_run("-p", "no:cacheprovider")
    given = [name for name in dir(ModelTests) if name.startswith("test_")]
    result.assertoutcome(passed=len(given) - 1, skipped=1)  # skipped: the example takes no labels


def test_the_example_listing_is_what_nahual_models_prints(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytester.makepyfile(bright=blocks("python")[0])
    pytester.syspathinsert()
    monkeypatch.setattr(registry, "available_models", lambda: {"bright": "bright:Bright"})
    assert main(["models"]) == 0
    listing = next(block for block in blocks("text") if block.startswith("bright "))
    assert capsys.readouterr().out == listing
