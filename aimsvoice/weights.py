"""Pull PersonaPlex from the Hugging Face hub, check it offline, and find it again.

What is pulled: what `talk` loads. config.json when the repo has one, the files it names
(moshi_name, mimi_name, tokenizer_name, mimi_config_name, lora_name; by default the LM, Mimi and
the text tokenizer of layout.py), and voices.tgz. Nothing else of the repo (README, dist.tgz).

Where the weights go:

* By default, the hub cache (HF_HOME / HF_HUB_CACHE respected). The model directory is the
  snapshot folder `<cache>/models--nvidia--personaplex-7b-v1/snapshots/<commit>/`: the hub's
  files (symlinks to its blobs), plus `voices/` extracted from voices.tgz and our manifest, both
  written inside it, as PersonaPlex's own server extracts voices.tgz beside the archive.
* With `--dir DIR`, DIR itself (the hub's local-dir mode; its bookkeeping lives in DIR/.cache).

The manifest (`aimsvoice-manifest.json` in the model directory) records each file's size and
sha256: for LFS files the sha256 the hub lists (it is also their ETag), for small git files the
sha256 of the bytes after their git blob id matched the hub's. `check` needs nothing else, so it
works offline. A small record in `$XDG_CONFIG_HOME/aimsvoice/pulled.json` remembers where the last
pull went, which is how `talk` and `bench` find the weights with no flags (`find_pulled_model`).

HTTP, resume (Range requests on `.incomplete` files), locking and auth are huggingface_hub's; this
module plans, checks disk space, verifies hashes, extracts voices and turns hub failures into one
line naming the fix.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import requests
from huggingface_hub import HfApi, constants, get_token, hf_hub_download
from huggingface_hub.errors import (
    DisabledRepoError,
    EntryNotFoundError,
    FileMetadataError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from . import xdg
from .errors import WeightsError
from .layout import (
    CONFIG_NAME,
    LM_NAME,
    MIMI_NAME,
    MODEL_PAGE_URL,
    REPO_ID,
    TEXT_TOKENIZER_NAME,
    VOICE_NAMES,
    VOICE_SUFFIXES,
    VOICES_ARCHIVE,
    VOICES_DIR,
)

MANIFEST_NAME = "aimsvoice-manifest.json"
MANIFEST_FORMAT = 1
RECORD_NAME = "pulled.json"
DEFAULT_REVISION = "main"

# config.json may name the files the loader reads (moshi's CheckpointInfo convention); these are
# the defaults when it does not.
CONFIG_FILE_KEYS = {
    "moshi_name": LM_NAME,
    "mimi_name": MIMI_NAME,
    "tokenizer_name": TEXT_TOKENIZER_NAME,
    "mimi_config_name": None,
    "lora_name": None,
}
VOICE_FILES = frozenset(f"{name}{suffix}" for name in VOICE_NAMES for suffix in VOICE_SUFFIXES)

_HASH_CHUNK_BYTES = 8 * 1024 * 1024
_POLL_S = 0.25
_NOTE_VERIFY_BYTES = 100_000_000  # hashing takes long enough from here on to say so


@dataclass(frozen=True)
class WeightsSpec:
    """What to pull and where: a hub repo at a revision, into the hub cache or `local_dir`."""

    repo_id: str = REPO_ID
    revision: str = DEFAULT_REVISION
    local_dir: Path | None = None  # None: the hub cache
    token: str | None = field(default=None, repr=False)  # None: HF_TOKEN or the stored login


@dataclass(frozen=True)
class PullResult:
    """Where the pulled model lives and what this pull transferred."""

    model_dir: Path
    repo_id: str
    commit: str
    n_files_downloaded: int
    n_bytes_downloaded: int
    offline: bool = False  # HF_HUB_OFFLINE was set and the files were already here


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
        return all(f.status == "ok" for f in self.files)

    @property
    def problems(self) -> tuple[FileCheck, ...]:
        return tuple(f for f in self.files if f.status != "ok")

    def failure(self) -> WeightsError | None:
        """The one-line error naming every missing or corrupt file, or None when all is well."""
        if self.ok:
            return None
        named = ", ".join(f"{f.name} ({f.status})" for f in self.problems)
        return WeightsError(
            f"{len(self.problems)} of {len(self.files)} model files in {self.model_dir} are missing or corrupt: "
            f"{named}; run `aimsvoice pull-weights{_dir_flag(self.model_dir)}` to repair"
        )


@dataclass(frozen=True)
class _RemoteFile:
    """A repo file as the hub lists it at the pulled commit."""

    name: str
    n_bytes: int
    etag: str  # sha256 for LFS files, the git blob id otherwise (the hub's ETag either way)
    is_lfs: bool


# --------------------------------------------------------------------------------------------
# pull


def pull(spec: WeightsSpec, *, console: Console | None = None) -> PullResult:
    """Download what `talk` needs from `spec.repo_id`, verify it and extract the voices.

    Resumes interrupted downloads, skips files already present and verified, refuses to start
    when the disk is too small, and records the result for `find_pulled_model` and `check`.
    Progress goes to `console` (bars on a terminal, plain lines otherwise); none when None.
    Raises WeightsError with a one-line fix for every failure it can explain.
    """
    spec = _normalized(spec)
    if constants.HF_HUB_OFFLINE:
        return _pull_offline(spec)
    bars_were_disabled = are_progress_bars_disabled()
    disable_progress_bars()  # we draw our own per-file and total bars
    try:
        return _pull_online(spec, console)
    finally:
        if not bars_were_disabled:
            enable_progress_bars()


def _pull_online(spec: WeightsSpec, console: Console | None) -> PullResult:
    commit, listing = _list_repo(spec)
    model_dir = _model_dir(spec, commit)
    # config.json (optional, as for the loader) is small and names the other files: fetch it first.
    config = listing.get(CONFIG_NAME)
    config_fresh = config is not None and not _is_local_complete(spec, config, model_dir)
    config_data = {}
    if config is not None:
        config_path = _download(spec, config)
        _expect_at(config_path, model_dir / CONFIG_NAME, spec)
        config_data = _read_config(spec, config_path)
    wanted = [*([config] if config else []), *[listing[name] for name in _needed_names(spec, config_data, listing)]]
    manifest = _read_manifest(model_dir)
    previous = manifest.get("files", {}) if manifest.get("commit") == commit else {}

    todo = [f for f in wanted if f is not config and not _is_local_complete(spec, f, model_dir)]
    n_bytes_todo = sum(f.n_bytes - _partial_bytes(spec, f) for f in todo)
    archive = listing[VOICES_ARCHIVE]
    voices_ready = manifest.get("voices_archive_etag") == archive.etag and _voices_intact(model_dir, manifest)
    # Extracted voices take about what the archive takes; the exact number is checked again
    # before extracting.
    _check_free_space(_download_root(spec), n_bytes_todo + (0 if voices_ready else archive.n_bytes))

    entries: dict[str, dict[str, object]] = {}
    fresh_names = {f.name for f in todo} | ({CONFIG_NAME} if config_fresh else set())
    n_files_downloaded = len(fresh_names)
    n_bytes_downloaded = config.n_bytes if config is not None and config_fresh else 0
    with _ProgressView(console, wanted, todo) as view:
        for remote in wanted:
            fresh = remote.name in fresh_names
            if remote in todo:
                n_bytes_downloaded += remote.n_bytes - _partial_bytes(spec, remote)
                path = _fetch(spec, remote, view)
            else:
                path = _download(spec, remote)  # already here: the hub only compares ETags
            _expect_at(path, model_dir / remote.name, spec)
            entry = previous.get(remote.name)
            if not fresh and _entry_matches(entry, remote, path):
                entries[remote.name] = entry  # verified by an earlier pull, untouched since
                continue
            if remote.n_bytes >= _NOTE_VERIFY_BYTES:
                view.note(f"verifying the sha256 of {remote.name}")
            sha256 = _verify(path, remote)
            if sha256 is None and not fresh:
                # What was here does not match the hub (damaged since): fetch it again, once.
                view.note(f"{remote.name} does not match the hub; downloading it again")
                _remove_download(spec, path)
                path = _fetch(spec, remote, view)
                n_files_downloaded += 1
                n_bytes_downloaded += remote.n_bytes
                sha256 = _verify(path, remote)
            if sha256 is None:
                _remove_download(spec, path)
                raise WeightsError(
                    f"{remote.name} from {spec.repo_id}@{commit[:8]} failed its checksum after download "
                    f"(altered on the way); it was deleted, rerun `aimsvoice pull-weights` to fetch it again"
                )
            entries[remote.name] = _entry(remote, path, sha256)

        if voices_ready:
            entries.update({k: v for k, v in manifest["files"].items() if k.startswith(VOICES_DIR + "/")})
        else:
            view.note(f"extracting {VOICES_ARCHIVE}")
            entries.update(extract_voices(model_dir / VOICES_ARCHIVE, model_dir))

    _write_json(
        model_dir / MANIFEST_NAME,
        {
            "format": MANIFEST_FORMAT,
            "repo_id": spec.repo_id,
            "revision": spec.revision,
            "commit": commit,
            "voices_archive_etag": archive.etag,
            "files": entries,
        },
    )
    _write_record(spec, model_dir, commit)
    return PullResult(model_dir, spec.repo_id, commit, n_files_downloaded, n_bytes_downloaded)


def _fetch(spec: WeightsSpec, remote: _RemoteFile, view: _ProgressView) -> Path:
    """Download `remote` (resuming any partial bytes) with its progress bar."""
    with view.downloading(remote, _partial_path(spec, remote)):
        return _download(spec, remote)


def _pull_offline(spec: WeightsSpec) -> PullResult:
    """HF_HUB_OFFLINE is set: succeed only when a complete pull of this revision is already here."""
    model_dir = spec.local_dir or _cached_snapshot(spec.repo_id, spec.revision)
    manifest = _read_manifest(model_dir) if model_dir is not None else {}
    missing = _quick_missing(model_dir, manifest) if model_dir is not None and manifest else ["everything"]
    if missing:
        raise WeightsError(
            f"HF_HUB_OFFLINE=1 is set, so nothing can be downloaded, and {spec.repo_id}@{spec.revision} is not all "
            f"here (missing: {', '.join(missing[:5])}): unset HF_HUB_OFFLINE and rerun `aimsvoice pull-weights`"
        )
    assert model_dir is not None
    _write_record(spec, model_dir, manifest["commit"])
    return PullResult(model_dir, spec.repo_id, manifest["commit"], 0, 0, offline=True)


def _normalized(spec: WeightsSpec) -> WeightsSpec:
    local_dir = spec.local_dir.expanduser().resolve() if spec.local_dir is not None else None
    return WeightsSpec(spec.repo_id, spec.revision or DEFAULT_REVISION, local_dir, spec.token)


def _list_repo(spec: WeightsSpec) -> tuple[str, dict[str, _RemoteFile]]:
    """The commit `spec.revision` points to, and the repo's files with sizes and hashes."""
    try:
        info = HfApi().model_info(spec.repo_id, revision=spec.revision, files_metadata=True, token=spec.token)
    except Exception as e:
        explained = _explain(e, spec, None)
        if explained is e:
            raise
        raise explained from e
    listing = {}
    for sibling in info.siblings or []:
        if sibling.size is None:
            continue
        if sibling.lfs is not None:
            listing[sibling.rfilename] = _RemoteFile(sibling.rfilename, sibling.lfs.size, sibling.lfs.sha256, True)
        elif sibling.blob_id is not None:
            listing[sibling.rfilename] = _RemoteFile(sibling.rfilename, sibling.size, sibling.blob_id, False)
    if not info.sha or not listing:
        raise WeightsError(
            f"the hub at {constants.ENDPOINT} listed {spec.repo_id} without commit or file sizes: "
            f"check HF_ENDPOINT and any proxy in between, then retry"
        )
    return info.sha, listing


def _read_config(spec: WeightsSpec, config_path: Path) -> dict:
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(f"{CONFIG_NAME} of {spec.repo_id} is not valid JSON ({e}): is --repo a PersonaPlex repo?") from e
    return config if isinstance(config, dict) else {}


def _needed_names(spec: WeightsSpec, config: dict, listing: dict[str, _RemoteFile]) -> list[str]:
    """The files config.json makes the loader read, then voices.tgz; raises naming any the repo lacks."""
    names = []
    for key, default in CONFIG_FILE_KEYS.items():
        name = config.get(key, default)
        if isinstance(name, str) and name and name not in names:
            _reject_unsafe_name(name, f"{CONFIG_NAME} key {key!r}")
            names.append(name)
    names.append(VOICES_ARCHIVE)
    missing = [name for name in names if name not in listing]
    if missing:
        raise _missing_files_error(spec, missing)
    return names


def _missing_files_error(spec: WeightsSpec, missing: list[str]) -> WeightsError:
    return WeightsError(
        f"{spec.repo_id}@{spec.revision} has no {', '.join(missing)}: is --repo a PersonaPlex repo? "
        f"The default is {REPO_ID}"
    )


def _reject_unsafe_name(name: str, where: str) -> None:
    parts = PurePosixPath(name).parts
    if name.startswith("/") or "\\" in name or ".." in parts:
        raise WeightsError(f"{where} names {name!r}, which is not a plain file of the repo: refusing to use it")


def _download(spec: WeightsSpec, remote: _RemoteFile) -> Path:
    """One file through huggingface_hub (resume, locks, cache); hub failures become WeightsError."""
    try:
        path = hf_hub_download(
            spec.repo_id,
            remote.name,
            revision=spec.revision,
            cache_dir=None if spec.local_dir else constants.HF_HUB_CACHE,
            local_dir=spec.local_dir,
            token=spec.token,
        )
    except Exception as e:
        partial = _partial_path(spec, remote)
        if isinstance(e, OSError) and "Consistency check failed" in str(e):
            partial.unlink(missing_ok=True)  # the bytes did not add up: resuming from them would corrupt
        explained = _explain(e, spec, remote, partial)
        if explained is e:
            raise
        raise explained from e
    return Path(path)


def _expect_at(path: Path, expected: Path, spec: WeightsSpec) -> None:
    if path != expected:  # the branch moved between listing and download: another snapshot
        raise WeightsError(
            f"{spec.repo_id}@{spec.revision} changed while pulling (got {path}, expected {expected}): "
            f"rerun `aimsvoice pull-weights` to pull the new revision"
        )


def _model_dir(spec: WeightsSpec, commit: str) -> Path:
    """Where the files of `commit` land: the hub-cache snapshot folder, or --dir."""
    return spec.local_dir if spec.local_dir is not None else _storage(spec.repo_id) / "snapshots" / commit


def _download_root(spec: WeightsSpec) -> Path:
    return spec.local_dir if spec.local_dir is not None else Path(constants.HF_HUB_CACHE)


def _storage(repo_id: str) -> Path:
    return Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")


def _partial_path(spec: WeightsSpec, remote: _RemoteFile) -> Path:
    """Where huggingface_hub keeps the bytes of an unfinished download of `remote`."""
    if spec.local_dir is None:
        return _storage(spec.repo_id) / "blobs" / f"{remote.etag}.incomplete"
    from huggingface_hub._local_folder import get_local_download_paths

    return get_local_download_paths(spec.local_dir, remote.name).incomplete_path(remote.etag)


def _partial_bytes(spec: WeightsSpec, remote: _RemoteFile) -> int:
    try:
        return min(_partial_path(spec, remote).stat().st_size, remote.n_bytes)
    except OSError:
        return 0


def _is_local_complete(spec: WeightsSpec, remote: _RemoteFile, model_dir: Path) -> bool:
    if spec.local_dir is None:
        blob = _storage(spec.repo_id) / "blobs" / remote.etag
        return (model_dir / remote.name).exists() or blob.is_file()
    path = spec.local_dir / remote.name
    return path.is_file() and path.stat().st_size == remote.n_bytes


def _remove_download(spec: WeightsSpec, path: Path) -> None:
    """Delete a bad download so the next attempt fetches it again (blob and pointer in the cache)."""
    if spec.local_dir is None and path.is_symlink():
        path.resolve().unlink(missing_ok=True)
    path.unlink(missing_ok=True)


def _check_free_space(target: Path, n_bytes_needed: int) -> None:
    """Refuse to start when the filesystem holding `target` has fewer than `n_bytes_needed` free."""
    probe = next((p for p in (target, *target.parents) if p.exists()), Path.cwd())
    n_bytes_free = shutil.disk_usage(probe).free
    if n_bytes_needed > n_bytes_free:
        raise WeightsError(
            f"not enough free disk space for the weights in {target}: the pull needs {n_bytes_needed:,} bytes "
            f"({_human(n_bytes_needed)}) and {n_bytes_free:,} are free; free {n_bytes_needed - n_bytes_free:,} "
            f"bytes or pull elsewhere with --dir DIR"
        )


# --------------------------------------------------------------------------------------------
# hashes and the manifest


def _verify(path: Path, remote: _RemoteFile) -> str | None:
    """The file's sha256 if its bytes match what the hub listed, else None."""
    if path.stat().st_size != remote.n_bytes:
        return None
    sha256 = hashlib.sha256()
    git_sha1 = hashlib.sha1(b"blob %d\0" % remote.n_bytes)
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK_BYTES):
            sha256.update(chunk)
            if not remote.is_lfs:
                git_sha1.update(chunk)
    if remote.is_lfs:
        return sha256.hexdigest() if sha256.hexdigest() == remote.etag else None
    return sha256.hexdigest() if git_sha1.hexdigest() == remote.etag else None


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _entry(remote: _RemoteFile, path: Path, sha256: str) -> dict[str, object]:
    return {"size": remote.n_bytes, "sha256": sha256, "etag": remote.etag, "mtime_ns": path.stat().st_mtime_ns}


def _entry_matches(entry: dict[str, object] | None, remote: _RemoteFile, path: Path) -> bool:
    """True when the manifest verified this very file (same ETag, size and mtime) in an earlier pull."""
    if not entry:
        return False
    stat = path.stat()
    return (entry.get("etag"), entry.get("size"), entry.get("mtime_ns")) == (remote.etag, stat.st_size, stat.st_mtime_ns)


def _read_manifest(model_dir: Path) -> dict:
    try:
        manifest = json.loads((model_dir / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return {}
    ok = isinstance(manifest, dict) and manifest.get("format") == MANIFEST_FORMAT and isinstance(manifest.get("files"), dict)
    return manifest if ok else {}


def _voices_intact(model_dir: Path, manifest: dict) -> bool:
    """True when the manifest lists extracted voices and each is here, untouched since (size, mtime)."""
    voices = {k: v for k, v in manifest.get("files", {}).items() if k.startswith(VOICES_DIR + "/")}
    for name, entry in voices.items():
        try:
            stat = (model_dir / name).stat()
        except OSError:
            return False
        if (stat.st_size, stat.st_mtime_ns) != (entry["size"], entry.get("mtime_ns")):
            return False
    return bool(voices)


def _quick_missing(model_dir: Path, manifest: dict) -> list[str]:
    """Manifest files absent or of the wrong size (no hashing: for lookups, not for `check`)."""
    missing = []
    for name, entry in manifest["files"].items():
        try:
            if (model_dir / name).stat().st_size != entry["size"]:
                missing.append(name)
        except OSError:
            missing.append(name)
    return missing


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# voices.tgz


def extract_voices(archive: Path, model_dir: Path) -> dict[str, dict[str, object]]:
    """Extract the voice prompts of `archive` into `model_dir/voices`, safely.

    The archive is untrusted: any absolute name, `..`, link, device or other special member
    refuses the whole archive before anything is written. Only the expected voice files
    (VOICE_NAMES x VOICE_SUFFIXES, at the top or under `voices/`) are kept; other regular files
    are ignored. Members are copied by hand, never with tarfile's extract, so nothing can land
    outside `voices/`. The old `voices/` is replaced only once the new one is complete.
    Returns manifest entries ("voices/NAME.pt" -> size and sha256).
    """
    kept = _scan_voices_archive(archive)
    _check_free_space(model_dir, sum(member.size for member in kept.values()))
    staging = model_dir / f".{VOICES_DIR}-{uuid.uuid4().hex[:8]}.partial"
    staging.mkdir(parents=True)
    entries: dict[str, dict[str, object]] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = _voice_file_name(member)
                if name is None or name not in kept:
                    continue
                source = tar.extractfile(member)
                assert source is not None  # a regular file, checked by the scan
                digest = hashlib.sha256()
                with open(staging / name, "wb") as out:
                    remaining = member.size
                    while remaining > 0 and (chunk := source.read(min(_HASH_CHUNK_BYTES, remaining))):
                        out.write(chunk)
                        digest.update(chunk)
                        remaining -= len(chunk)
                if remaining:
                    raise WeightsError(f"{archive.name} is truncated at {name}: delete {archive} and rerun `aimsvoice pull-weights`")
                entries[f"{VOICES_DIR}/{name}"] = {"size": member.size, "sha256": digest.hexdigest()}
        _swap_in(staging, model_dir / VOICES_DIR)
        for key, entry in entries.items():
            entry["mtime_ns"] = (model_dir / key).stat().st_mtime_ns
    except (tarfile.TarError, EOFError, OSError) as e:
        raise WeightsError(f"cannot extract {archive} ({e}): delete it and rerun `aimsvoice pull-weights`") from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return entries


def _scan_voices_archive(archive: Path) -> dict[str, tarfile.TarInfo]:
    """Check every member of the archive; return the voice files to keep by file name."""
    kept: dict[str, tarfile.TarInfo] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                _reject_unsafe_member(archive, member)
                name = _voice_file_name(member)
                if name is None:
                    continue
                if name in kept:
                    raise WeightsError(f"unsafe {archive.name}: {name} appears twice; refusing to extract it")
                kept[name] = member
    except (tarfile.TarError, EOFError, OSError) as e:
        raise WeightsError(f"cannot read {archive} ({e}): delete it and rerun `aimsvoice pull-weights`") from e
    missing = [name for name in VOICE_NAMES if f"{name}.pt" not in kept]
    if missing:
        raise WeightsError(
            f"{archive.name} lacks the voice prompts {', '.join(missing)}.pt: is --repo a PersonaPlex repo "
            f"(default {REPO_ID})?"
        )
    return kept


def _reject_unsafe_member(archive: Path, member: tarfile.TarInfo) -> None:
    name = member.name
    parts = PurePosixPath(name).parts
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise WeightsError(f"unsafe {archive.name}: member {name!r} has an absolute path; refusing to extract it")
    if ".." in parts or ".." in name.split("\\"):
        raise WeightsError(f"unsafe {archive.name}: member {name!r} points outside its folder; refusing to extract it")
    if member.issym() or member.islnk():
        raise WeightsError(
            f"unsafe {archive.name}: member {name!r} is a link (to {member.linkname!r}); refusing to extract it"
        )
    if not (member.isfile() or member.isdir()):
        raise WeightsError(f"unsafe {archive.name}: member {name!r} is a device or special file; refusing to extract it")


def _voice_file_name(member: tarfile.TarInfo) -> str | None:
    """The voice file a member holds, or None when it is not one of the files to keep."""
    if not member.isfile():
        return None
    parts = [p for p in PurePosixPath(member.name).parts if p != "."]
    if len(parts) == 2 and parts[0] == VOICES_DIR or len(parts) == 1:
        return parts[-1] if parts[-1] in VOICE_FILES else None
    return None


def _swap_in(staging: Path, target: Path) -> None:
    old = target.with_name(f".{target.name}-{uuid.uuid4().hex[:8]}.old")
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# check and find


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
            f"{_storage(repo_id or REPO_ID)}): run `aimsvoice pull-weights`"
        )
    manifest = _read_manifest(model_dir)
    if not manifest:
        raise WeightsError(
            f"{model_dir} has no {MANIFEST_NAME}, so no pull into it finished: "
            f"run `aimsvoice pull-weights{_dir_flag(model_dir)}`"
        )
    files = []
    for name, entry in sorted(manifest["files"].items()):
        path = model_dir / name
        n_bytes = int(entry["size"])
        if not path.is_file():
            files.append(FileCheck(name, n_bytes, "missing"))
        elif (size := path.stat().st_size) != n_bytes:
            files.append(FileCheck(name, n_bytes, "wrong size", f"{size:,} bytes, expected {n_bytes:,}"))
        elif (sha256 := _sha256_file(path)) != entry["sha256"]:
            files.append(FileCheck(name, n_bytes, "corrupt", f"sha256 {sha256[:12]}…, expected {entry['sha256'][:12]}…"))
        else:
            files.append(FileCheck(name, n_bytes, "ok"))
    return CheckReport(model_dir, manifest.get("repo_id", "?"), manifest.get("commit", "?"), tuple(files))


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


def _is_complete(model_dir: Path) -> bool:
    manifest = _read_manifest(model_dir)
    return bool(manifest) and not _quick_missing(model_dir, manifest)


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
    snapshots = _storage(repo_id) / "snapshots"
    try:
        pulled = [d for d in snapshots.iterdir() if (d / MANIFEST_NAME).is_file()]
    except OSError:
        return []
    main = _cached_snapshot(repo_id, DEFAULT_REVISION)
    return sorted(pulled, key=lambda d: (d != main, -(d / MANIFEST_NAME).stat().st_mtime))


def _cached_snapshot(repo_id: str, revision: str) -> Path | None:
    commit = revision
    try:
        commit = (_storage(repo_id) / "refs" / revision).read_text().strip()
    except OSError:
        pass
    snapshot = _storage(repo_id) / "snapshots" / commit
    return snapshot if snapshot.is_dir() else None


def _record_path() -> Path:
    return xdg.config_dir() / RECORD_NAME


def _read_record() -> dict:
    try:
        record = json.loads(_record_path().read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _write_record(spec: WeightsSpec, model_dir: Path, commit: str) -> None:
    path = _record_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_json(path, {"repo_id": spec.repo_id, "revision": spec.revision, "commit": commit, "model_dir": str(model_dir)})


def _dir_flag(model_dir: Path) -> str:
    """` --dir DIR` when `model_dir` is not a hub-cache snapshot (what reruns the same pull)."""
    return "" if model_dir.parent.name == "snapshots" else f" --dir {model_dir}"


# --------------------------------------------------------------------------------------------
# errors: one table, subclasses before their bases


def _explain(error: Exception, spec: WeightsSpec, remote: _RemoteFile | None, partial: Path | None = None) -> Exception:
    """The WeightsError for a hub failure, or `error` itself when it is not one we can explain."""
    repo = f"{spec.repo_id}@{spec.revision}"
    page = MODEL_PAGE_URL if spec.repo_id == REPO_ID else f"{constants.ENDPOINT}/{spec.repo_id}"
    retry = "rerun `aimsvoice pull-weights`"
    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(error, GatedRepoError):
        if spec.token is None and get_token() is None:
            return WeightsError(
                f"{spec.repo_id} is gated and no Hugging Face token was found: accept the NVIDIA Open Model License "
                f"at {page}, then run `hf auth login` (or set HF_TOKEN, or pass --token) and {retry}"
            )
        return WeightsError(
            f"{spec.repo_id} is gated and this token's account has not accepted its license: accept the NVIDIA "
            f"Open Model License at {page} (logged in as the token's owner), then {retry}"
        )
    if isinstance(error, RepositoryNotFoundError):
        return WeightsError(
            f"repo {spec.repo_id} not found on {constants.ENDPOINT} (or private to your token): check --repo "
            f"(default {REPO_ID})"
        )
    if isinstance(error, RevisionNotFoundError):
        return WeightsError(
            f"revision {spec.revision!r} not found in {spec.repo_id}: pass a branch, tag or commit of that repo to "
            f"--revision (default {DEFAULT_REVISION})"
        )
    if isinstance(error, (OfflineModeIsEnabled, LocalEntryNotFoundError)) or (
        remote is None and isinstance(error, (requests.ConnectionError, requests.Timeout))
    ):
        return WeightsError(
            f"cannot reach the Hugging Face hub at {constants.ENDPOINT}: check your connection, proxy or HF_ENDPOINT "
            f"and {retry}; if the weights are already here, set HF_HUB_OFFLINE=1 to use them "
            f"(`aimsvoice pull-weights --check` verifies them)"
        )
    if isinstance(error, EntryNotFoundError):
        missing = remote.name if remote is not None else "a needed file"
        return _missing_files_error(spec, [missing])
    if isinstance(error, DisabledRepoError):
        return WeightsError(f"{spec.repo_id} is disabled on the hub: pull another repo with --repo")
    if isinstance(error, HfHubHTTPError) and status == 401:
        return WeightsError(
            f"the Hugging Face hub rejected the token (401 Unauthorized) for {repo}: make a read token at "
            f"https://huggingface.co/settings/tokens, then `hf auth login` (or HF_TOKEN, or --token) and {retry}"
        )
    if isinstance(error, HfHubHTTPError) and status == 403:
        return WeightsError(
            f"the hub refused this token access to {repo} (403 Forbidden): use a token with read access to public "
            f"gated repos (https://huggingface.co/settings/tokens), then {retry}"
        )
    if isinstance(error, HfHubHTTPError) and status is not None and status >= 500:
        return WeightsError(f"the hub answered {status} for {repo}: try again later; {retry} resumes where it stopped")
    if isinstance(error, FileMetadataError):
        return WeightsError(
            f"the hub at {constants.ENDPOINT} answered without file metadata ({error}): a proxy or firewall may be "
            f"in the way; check it and HF_ENDPOINT, then {retry}"
        )
    if remote is not None and (
        isinstance(error, (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError))
        or (isinstance(error, OSError) and "Consistency check failed" in str(error))
    ):
        return WeightsError(
            f"the download of {remote.name} was interrupted ({_size_or_zero(partial):,} of {remote.n_bytes:,} bytes kept): "
            f"{retry} to resume from there"
        )
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return WeightsError(
            f"the disk filled up while downloading {remote.name if remote else 'the weights'} into "
            f"{_download_root(spec)}: free space, then {retry} to resume"
        )
    if isinstance(error, HfHubHTTPError):
        return WeightsError(f"the hub answered {status} for {repo} ({str(error).splitlines()[0]}): {retry}")
    return error


def _size_or_zero(path: Path | None) -> int:
    try:
        return path.stat().st_size if path is not None else 0
    except OSError:
        return 0


# --------------------------------------------------------------------------------------------
# progress


class _ProgressView:
    """One bar per file plus a total, with speed and ETA; plain lines when not on a terminal.

    huggingface_hub downloads on the calling thread, so a watcher thread reads how far the
    `.incomplete` file has grown and sets the numbers; rich redraws on its own thread.
    """

    def __init__(self, console: Console | None, files: list[_RemoteFile], todo: list[_RemoteFile]) -> None:
        self._console = console
        self._files = files
        self._todo = todo
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        self._total: TaskID | None = None
        self._n_bytes_finished = sum(f.n_bytes for f in files if f not in todo)

    def __enter__(self) -> _ProgressView:
        if self._console is not None and self._console.is_terminal:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=self._console,
            )
            for f in self._files:
                done = f.n_bytes if f not in self._todo else 0
                self._tasks[f.name] = self._progress.add_task(f.name, total=f.n_bytes, completed=done)
            total = sum(f.n_bytes for f in self._files)
            self._total = self._progress.add_task("total", total=total, completed=self._n_bytes_finished)
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def note(self, text: str) -> None:
        """A line above the bars (or a plain line)."""
        if self._progress is not None:
            self._progress.console.log(text)
        elif self._console is not None:
            self._console.print(text, highlight=False, soft_wrap=True)

    @contextmanager
    def downloading(self, remote: _RemoteFile, partial: Path) -> Iterator[None]:
        """Show `remote` growing while the body runs its download."""
        started = time.monotonic()
        stop = threading.Event()
        watcher = None
        if self._progress is not None:
            watcher = threading.Thread(target=self._watch, args=(remote, partial, stop), daemon=True)
            watcher.start()
        elif self._console is not None:
            resumed = f", resuming at {_human(_size_or_zero(partial))}" if _size_or_zero(partial) else ""
            self._console.print(f"downloading {remote.name} ({_human(remote.n_bytes)}{resumed})", highlight=False, soft_wrap=True)
        try:
            yield
        finally:
            stop.set()
            if watcher is not None:
                watcher.join()
        self._n_bytes_finished += remote.n_bytes
        if self._progress is not None:
            self._progress.update(self._tasks[remote.name], completed=remote.n_bytes)
            self._progress.update(self._total, completed=self._n_bytes_finished)  # type: ignore[arg-type]
        elif self._console is not None:
            seconds = max(time.monotonic() - started, 1e-6)
            speed = _human(int(remote.n_bytes / seconds))
            self._console.print(f"downloaded {remote.name} in {seconds:.1f} s ({speed}/s)", highlight=False, soft_wrap=True)

    def _watch(self, remote: _RemoteFile, partial: Path, stop: threading.Event) -> None:
        assert self._progress is not None and self._total is not None
        while not stop.wait(_POLL_S):
            n_bytes = min(_size_or_zero(partial), remote.n_bytes)
            self._progress.update(self._tasks[remote.name], completed=n_bytes)
            self._progress.update(self._total, completed=self._n_bytes_finished + n_bytes)


def _human(n_bytes: int) -> str:
    value = float(n_bytes)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")
