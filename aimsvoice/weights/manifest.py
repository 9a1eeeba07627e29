"""The sha256 manifest of a model directory, the offline `check`, and finding a pulled model again.

The manifest (`aimsvoice-manifest.json` in the model directory) records each file's size and
sha256: for LFS files the sha256 the hub lists (it is also their ETag), for small git files the
sha256 of the bytes after their git blob id matched the hub's, for extracted voices the sha256 of
the bytes written. `check` needs nothing else, so it works offline, whatever set of voices the
pull extracted. The pull record (`$XDG_CONFIG_HOME/aimsvoice/pulled.json`) remembers where the
last pull went, which is how `talk` and `bench` find the weights with no flags.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import xdg
from ..errors import WeightsError
from ..layout import REPO_ID, VOICES_DIR
from .spec import DEFAULT_REVISION, RemoteFile
from .storage import cached_snapshot, repo_cache_dir

MANIFEST_NAME = "aimsvoice-manifest.json"
MANIFEST_FORMAT = 1
RECORD_NAME = "pulled.json"
HASH_CHUNK_BYTES = 8 * 1024 * 1024

Entry = dict[str, Any]  # one file of the manifest: size, sha256, and for pulled files etag and mtime_ns


@dataclass(frozen=True)
class FileCheck:
    """One file of the model directory against the manifest."""

    name: str  # relative to the model directory, '/'-separated
    n_bytes: int  # expected size
    status: str  # "ok", "missing", "wrong size" or "corrupt"
    detail: str = ""


@dataclass(frozen=True)
class CheckReport:
    """The result of `check`: where the model lives and the state of each of its files."""

    model_dir: Path
    repo_id: str
    commit: str
    files: tuple[FileCheck, ...]

    @property
    def ok(self) -> bool:
        """True when every file is present and intact."""
        return all(f.status == "ok" for f in self.files)

    @property
    def problems(self) -> tuple[FileCheck, ...]:
        """The files that are missing, of the wrong size or corrupt."""
        return tuple(f for f in self.files if f.status != "ok")

    def failure(self) -> WeightsError | None:
        """The one-line error naming every missing or corrupt file, or None when all is well."""
        if self.ok:
            return None
        named = ", ".join(f"{f.name} ({f.status})" for f in self.problems)
        return WeightsError(
            f"{len(self.problems)} of {len(self.files)} model files in {self.model_dir} are missing or corrupt: "
            f"{named}; run `aimsvoice pull-weights{dir_flag(self.model_dir)}` to repair"
        )


def check(*, local_dir: Path | None = None, repo_id: str | None = None) -> CheckReport:
    """Verify the pulled model offline: each file present, of the recorded size and sha256.

    Checks `local_dir` if given, else where the last pull (of `repo_id`, when given) went, else a
    pull in the hub cache. Never touches the network. Raises WeightsError when there is nothing
    to check.
    """
    model_dir = local_dir.expanduser().resolve() if local_dir is not None else _locate(repo_id)
    if model_dir is None:
        raise WeightsError(
            f"no pulled {repo_id or 'PersonaPlex'} weights found (looked at {_record_path()} and in "
            f"{repo_cache_dir(repo_id or REPO_ID)}): run `aimsvoice pull-weights`"
        )
    manifest = read_manifest(model_dir)
    if not manifest:
        raise WeightsError(
            f"{model_dir} has no {MANIFEST_NAME}, so no pull into it finished: "
            f"run `aimsvoice pull-weights{dir_flag(model_dir)}`"
        )
    files = [_check_file(model_dir, name, entry) for name, entry in sorted(manifest["files"].items())]
    return CheckReport(model_dir, manifest.get("repo_id", "?"), manifest.get("commit", "?"), tuple(files))


def _check_file(model_dir: Path, name: str, entry: Entry) -> FileCheck:
    path = model_dir / name
    n_bytes = int(entry["size"])
    if not path.is_file():
        return FileCheck(name, n_bytes, "missing")
    if (size := path.stat().st_size) != n_bytes:
        return FileCheck(name, n_bytes, "wrong size", f"{size:,} bytes, expected {n_bytes:,}")
    if (sha256 := sha256_file(path)) != entry["sha256"]:
        return FileCheck(name, n_bytes, "corrupt", f"sha256 {sha256[:12]}…, expected {entry['sha256'][:12]}…")
    return FileCheck(name, n_bytes, "ok")


def find_pulled_model(repo_id: str | None = None) -> Path | None:
    """The model directory of the pulled weights, if a complete pull is here; no network.

    Where the last `pull-weights` went (of any repo, or of `repo_id` when given; recorded under
    $XDG_CONFIG_HOME/aimsvoice, so `--dir` and the HF_HOME of that pull are remembered), else a
    complete pull of nvidia/personaplex-7b-v1 (or `repo_id`) in the current hub cache.
    Presence and sizes only: `check` is the thorough one.
    """
    record = _read_record()
    if repo_id in (None, record.get("repo_id")):
        model_dir = Path(record.get("model_dir", ""))
        if _is_complete(model_dir):
            return model_dir
    for model_dir in _cached_pulls(repo_id or REPO_ID):
        if _is_complete(model_dir):
            return model_dir
    return None


def verify(path: Path, remote: RemoteFile) -> str | None:
    """The file's sha256 if its bytes match what the hub listed, else None."""
    if path.stat().st_size != remote.n_bytes:
        return None
    sha256 = hashlib.sha256()
    git_sha1 = hashlib.sha1(b"blob %d\0" % remote.n_bytes)
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK_BYTES):
            sha256.update(chunk)
            if not remote.is_lfs:
                git_sha1.update(chunk)
    if remote.is_lfs:
        return sha256.hexdigest() if sha256.hexdigest() == remote.etag else None
    return sha256.hexdigest() if git_sha1.hexdigest() == remote.etag else None


def sha256_file(path: Path) -> str:
    """The sha256 of the file at `path`, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def entry(remote: RemoteFile, path: Path, sha256: str) -> Entry:
    """The manifest entry of a pulled file, verified to hash to `sha256`."""
    return {"size": remote.n_bytes, "sha256": sha256, "etag": remote.etag, "mtime_ns": path.stat().st_mtime_ns}


def entry_matches(entry: Entry | None, remote: RemoteFile, path: Path) -> bool:
    """True when the manifest verified this very file (same ETag, size and mtime) in an earlier pull."""
    if not entry:
        return False
    stat = path.stat()
    return (entry.get("etag"), entry.get("size"), entry.get("mtime_ns")) == (remote.etag, stat.st_size, stat.st_mtime_ns)


def voice_entries(manifest: dict) -> dict[str, Entry]:
    """The manifest's entries of extracted voices (`voices/NAME.pt`, ...), whatever their names."""
    return {k: v for k, v in manifest.get("files", {}).items() if k.startswith(VOICES_DIR + "/")}


def voices_intact(model_dir: Path, manifest: dict) -> bool:
    """True when the manifest lists extracted voices and each is here, untouched since (size, mtime)."""
    voices = voice_entries(manifest)
    for name, entry in voices.items():
        try:
            stat = (model_dir / name).stat()
        except OSError:
            return False
        if (stat.st_size, stat.st_mtime_ns) != (entry["size"], entry.get("mtime_ns")):
            return False
    return bool(voices)


def quick_missing(model_dir: Path, manifest: dict) -> list[str]:
    """Manifest files absent or of the wrong size (no hashing: for lookups, not for `check`)."""
    missing = []
    for name, entry in manifest["files"].items():
        try:
            if (model_dir / name).stat().st_size != entry["size"]:
                missing.append(name)
        except OSError:
            missing.append(name)
    return missing


def read_manifest(model_dir: Path) -> dict:
    """The manifest of `model_dir`, or {} when it has none (or one this version cannot read)."""
    try:
        manifest = json.loads((model_dir / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return {}
    ok = isinstance(manifest, dict) and manifest.get("format") == MANIFEST_FORMAT and isinstance(manifest.get("files"), dict)
    return manifest if ok else {}


def write_manifest(
    model_dir: Path, *, repo_id: str, revision: str, commit: str, voices_archive_etag: str, files: dict[str, Entry]
) -> None:
    """Record a finished pull in `model_dir`; written last, so its presence means the pull completed."""
    _write_json(
        model_dir / MANIFEST_NAME,
        {
            "format": MANIFEST_FORMAT,
            "repo_id": repo_id,
            "revision": revision,
            "commit": commit,
            "voices_archive_etag": voices_archive_etag,
            "files": files,
        },
    )


def write_record(repo_id: str, revision: str, commit: str, model_dir: Path) -> None:
    """Remember where the last pull went, for `find_pulled_model` and `check`."""
    path = _record_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_json(path, {"repo_id": repo_id, "revision": revision, "commit": commit, "model_dir": str(model_dir)})


def dir_flag(model_dir: Path) -> str:
    """` --dir DIR` when `model_dir` is not a hub-cache snapshot (what reruns the same pull)."""
    return "" if model_dir.parent.name == "snapshots" else f" --dir {model_dir}"


def _is_complete(model_dir: Path) -> bool:
    manifest = read_manifest(model_dir)
    return bool(manifest) and not quick_missing(model_dir, manifest)


def _locate(repo_id: str | None) -> Path | None:
    """The directory of the last pull (of `repo_id` if given; complete or not), else one in the hub cache."""
    record = _read_record()
    if repo_id in (None, record.get("repo_id")):
        model_dir = Path(record.get("model_dir", ""))
        if (model_dir / MANIFEST_NAME).is_file():
            return model_dir
    return next(iter(_cached_pulls(repo_id or REPO_ID)), None)


def _cached_pulls(repo_id: str) -> list[Path]:
    """Snapshots of `repo_id` in the hub cache that a pull finished in, best first (refs/main, then newest)."""
    snapshots = repo_cache_dir(repo_id) / "snapshots"
    try:
        pulled = [d for d in snapshots.iterdir() if (d / MANIFEST_NAME).is_file()]
    except OSError:
        return []
    main = cached_snapshot(repo_id, DEFAULT_REVISION)
    return sorted(pulled, key=lambda d: (d != main, -(d / MANIFEST_NAME).stat().st_mtime))


def _record_path() -> Path:
    return xdg.config_dir() / RECORD_NAME


def _read_record() -> dict:
    try:
        record = json.loads(_record_path().read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
