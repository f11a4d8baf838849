"""One version number: pyproject.toml's, as robusthp.__version__ and in CITATION.cff."""

from __future__ import annotations

import importlib
import re
from importlib import metadata
from pathlib import Path

import yaml

import robusthp

ROOT = Path(__file__).resolve().parents[1]


def test_version_is_pyprojects() -> None:
    # tomllib is Python 3.11+; requires-python is 3.10
    pyproject = (ROOT / "pyproject.toml").read_text()
    (expected,) = re.findall(r'^version = "([^"]+)"$', pyproject, flags=re.MULTILINE)
    assert robusthp.__version__ == expected
    assert yaml.safe_load((ROOT / "CITATION.cff").read_text())["version"] == expected


def test_version_when_not_installed(monkeypatch) -> None:
    def not_found(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_found)
    try:
        assert importlib.reload(robusthp).__version__ == "0+unknown"
    finally:
        monkeypatch.undo()
        importlib.reload(robusthp)
    assert robusthp.__version__ != "0+unknown"
