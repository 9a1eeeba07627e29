"""aimsvoice's folders under the XDG base directories: the user's config, and caches."""

from __future__ import annotations

import os
from pathlib import Path

APP = "aimsvoice"


def _base(variable: str, default: str) -> Path:
    value = os.environ.get(variable, "")
    # The XDG spec: a relative path in these variables is invalid and must be ignored.
    return Path(value) if os.path.isabs(value) else Path.home() / default


def config_dir() -> Path:
    """`$XDG_CONFIG_HOME/aimsvoice` (default `~/.config/aimsvoice`): personas, the pull record."""
    return _base("XDG_CONFIG_HOME", ".config") / APP


def cache_dir() -> Path:
    """`$XDG_CACHE_HOME/aimsvoice` (default `~/.cache/aimsvoice`): the tiny model, prompt states."""
    return _base("XDG_CACHE_HOME", ".cache") / APP
