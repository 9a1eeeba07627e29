"""Where pulled files live on disk, how much of a download is already there, and whether a pull fits.

The hub cache follows huggingface_hub's documented layout (guide "Manage the cache"): the folder
`<HF_HUB_CACHE>/models--{org}--{name}/` holds `refs/<branch>` (the commit the branch pointed to),
`blobs/<etag>` (contents) and `snapshots/<commit>/<file>` (links to the blobs). With `--dir DIR`
the hub keeps its bookkeeping in `DIR/.cache/huggingface/` (guide "Download files").

An unfinished download is `blobs/<etag>.incomplete` in the cache. Under `--dir` it sits in
`.cache/huggingface/download/<folder of the file>/` and only its `.<etag>.incomplete` ending is
stable across huggingface_hub versions, so that ending is all we match.
"""

from __future__ import annotations

import shutil
from pathlib import Path, PurePosixPath

from huggingface_hub import constants

from ..errors import WeightsError
from .spec import RemoteFile, WeightsSpec


def repo_cache_dir(repo_id: str) -> Path:
    """The hub-cache folder of model repo `repo_id`: `<HF_HUB_CACHE>/models--{org}--{name}`."""
    return Path(constants.HF_HUB_CACHE) / "--".join(("models", *repo_id.split("/")))


def model_dir(spec: WeightsSpec, commit: str) -> Path:
    """Where the files of `commit` land: the hub-cache snapshot folder, or --dir."""
    return spec.local_dir if spec.local_dir is not None else repo_cache_dir(spec.repo_id) / "snapshots" / commit


def download_root(spec: WeightsSpec) -> Path:
    """The folder a pull writes under: --dir, else the hub cache."""
    return spec.local_dir if spec.local_dir is not None else Path(constants.HF_HUB_CACHE)


def cached_snapshot(repo_id: str, revision: str) -> Path | None:
    """The snapshot folder `revision` (a branch, tag or commit) resolves to in the hub cache, if any."""
    commit = revision
    try:
        commit = (repo_cache_dir(repo_id) / "refs" / revision).read_text().strip()
    except OSError:
        pass
    snapshot = repo_cache_dir(repo_id) / "snapshots" / commit
    return snapshot if snapshot.is_dir() else None


def partial_path(spec: WeightsSpec, remote: RemoteFile) -> Path | None:
    """The bytes huggingface_hub kept of an unfinished download of `remote`, if there are any."""
    if spec.local_dir is None:
        path = repo_cache_dir(spec.repo_id) / "blobs" / f"{remote.etag}.incomplete"
        return path if path.is_file() else None
    folder = spec.local_dir.joinpath(".cache", "huggingface", "download", *PurePosixPath(remote.name).parent.parts)
    ending = f".{remote.etag}.incomplete"
    try:
        return next((p for p in folder.iterdir() if p.name.endswith(ending)), None)
    except OSError:
        return None


def size_or_zero(path: Path | None) -> int:
    """The size of `path` in bytes; 0 when there is no such file."""
    try:
        return path.stat().st_size if path is not None else 0
    except OSError:
        return 0


def check_free_space(target: Path, n_bytes_needed: int) -> None:
    """Refuse to start when the filesystem holding `target` has fewer than `n_bytes_needed` free."""
    probe = next((p for p in (target, *target.parents) if p.exists()), Path.cwd())
    n_bytes_free = shutil.disk_usage(probe).free
    if n_bytes_needed > n_bytes_free:
        raise WeightsError(
            f"not enough free disk space for the weights in {target}: the pull needs {n_bytes_needed:,} bytes "
            f"({human_bytes(n_bytes_needed)}) and {n_bytes_free:,} are free; free {n_bytes_needed - n_bytes_free:,} "
            f"bytes or pull elsewhere with --dir DIR"
        )


def human_bytes(n_bytes: int) -> str:
    """`n_bytes` in decimal units for people: 950 B, 1.5 MB, 16.7 GB."""
    value = float(n_bytes)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")
