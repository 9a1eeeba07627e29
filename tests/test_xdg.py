"""One helper for aimsvoice's XDG folders, as the spec reads: relative values are ignored."""

from __future__ import annotations

from pathlib import Path

import pytest

from aimsvoice import xdg
from aimsvoice.engine.prompts import VoicePrompt, prompt_cache_path
from aimsvoice.engine.tiny import default_tiny_dir


@pytest.mark.parametrize(("variable", "folder", "default"), [
    ("XDG_CONFIG_HOME", xdg.config_dir, ".config"),
    ("XDG_CACHE_HOME", xdg.cache_dir, ".cache"),
])
def test_absolute_values_are_used_relative_and_empty_ones_ignored(variable, folder, default, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv(variable, str(tmp_path / "xdg"))
    assert folder() == tmp_path / "xdg" / "aimsvoice"
    for ignored in ("relative/place", ""):
        monkeypatch.setenv(variable, ignored)
        assert folder() == tmp_path / "home" / default / "aimsvoice"


def test_every_cache_lives_under_the_one_cache_folder(tmp_path, monkeypatch) -> None:
    import numpy as np

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", "not/absolute")
    cache = tmp_path / "home" / ".cache" / "aimsvoice"
    assert default_tiny_dir().parent.parent == cache
    voice = VoicePrompt(Path("v.wav"), audio=np.zeros(10, dtype=np.float32))
    assert prompt_cache_path(voice, "key").is_relative_to(cache)
