"""Shared fixtures: hermetic caches and one tiny model for the whole session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("NO_TORCH_COMPILE", "1")  # moshi's lazy compile costs seconds on CPU for nothing
os.environ["HF_HUB_OFFLINE"] = "1"  # nothing is downloaded at test time
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private XDG cache for the session: the tiny model is built there once."""
    return tmp_path_factory.mktemp("xdg-cache")


@pytest.fixture(autouse=True)
def isolated_cache(session_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test sees the session cache, never the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(session_cache))
    return session_cache


@pytest.fixture(scope="session")
def tiny_dir(session_cache: Path) -> Path:
    """The built-in tiny model, built once per test session, as `--model tiny` finds it."""
    from aimsvoice.engine.tiny import default_tiny_dir, ensure_tiny_model

    os.environ["XDG_CACHE_HOME"] = str(session_cache)
    directory = ensure_tiny_model()
    assert directory == default_tiny_dir()
    return directory
