"""What a pull is about: the repo, revision and destination asked for, and the files the hub lists."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..layout import REPO_ID

DEFAULT_REVISION = "main"


@dataclass(frozen=True)
class WeightsSpec:
    """What to pull and where: a hub repo at a revision, into the hub cache or `local_dir`."""

    repo_id: str = REPO_ID
    revision: str = DEFAULT_REVISION
    local_dir: Path | None = None  # None: the hub cache
    token: str | None = field(default=None, repr=False)  # None: HF_TOKEN or the stored login


@dataclass(frozen=True)
class RemoteFile:
    """A repo file as the hub lists it at the pulled commit."""

    name: str
    n_bytes: int
    etag: str  # sha256 for LFS files, the git blob id otherwise (the hub's ETag either way)
    is_lfs: bool
