"""`pull`: list the repo, check free space, fetch (resuming) and verify what `talk` needs, extract the voices.

HTTP, resume (Range requests on `.incomplete` files), locking and auth are huggingface_hub's;
this module plans, checks disk space, verifies hashes and records the result.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from huggingface_hub import HfApi, constants, hf_hub_download
from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
from rich.console import Console

from ..errors import WeightsError
from ..layout import CONFIG_NAME, LM_NAME, MIMI_NAME, TEXT_TOKENIZER_NAME, VOICES_ARCHIVE
from . import manifest, storage
from .errors import explain, missing_files_error
from .progress import ProgressView
from .spec import DEFAULT_REVISION, RemoteFile, WeightsSpec
from .voices import extract_voices

# config.json may name the files the loader reads (moshi's CheckpointInfo convention); these are
# the defaults when it does not.
CONFIG_FILE_KEYS = {
    "moshi_name": LM_NAME,
    "mimi_name": MIMI_NAME,
    "tokenizer_name": TEXT_TOKENIZER_NAME,
    "mimi_config_name": None,
    "lora_name": None,
}

_NOTE_VERIFY_BYTES = 100_000_000  # hashing takes long enough from here on to say so


@dataclass(frozen=True)
class PullResult:
    """Where the pulled model lives and what this pull transferred."""

    model_dir: Path
    repo_id: str
    commit: str
    n_files_downloaded: int
    n_bytes_downloaded: int
    offline: bool = False  # HF_HUB_OFFLINE was set and the files were already here


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
    model_dir = storage.model_dir(spec, commit)
    # config.json (optional, as for the loader) is small and names the other files: fetch it first.
    config = listing.get(CONFIG_NAME)
    config_fresh = config is not None and not _is_local_complete(spec, config, model_dir)
    config_data = {}
    if config is not None:
        config_path = _download(spec, config)
        _expect_at(config_path, model_dir / CONFIG_NAME, spec)
        config_data = _read_config(spec, config_path)
    wanted = [*([config] if config else []), *[listing[name] for name in _needed_names(spec, config_data, listing)]]
    recorded = manifest.read_manifest(model_dir)
    previous = recorded.get("files", {}) if recorded.get("commit") == commit else {}

    todo = [f for f in wanted if f is not config and not _is_local_complete(spec, f, model_dir)]
    n_bytes_todo = sum(f.n_bytes - _partial_bytes(spec, f) for f in todo)
    archive = listing[VOICES_ARCHIVE]
    voices_ready = recorded.get("voices_archive_etag") == archive.etag and manifest.voices_intact(model_dir, recorded)
    # Extracted voices take about what the archive takes; the exact number is checked again
    # before extracting.
    storage.check_free_space(storage.download_root(spec), n_bytes_todo + (0 if voices_ready else archive.n_bytes))

    entries: dict[str, manifest.Entry] = {}
    fresh_names = {f.name for f in todo} | ({CONFIG_NAME} if config_fresh else set())
    n_files_downloaded = len(fresh_names)
    n_bytes_downloaded = config.n_bytes if config is not None and config_fresh else 0
    with ProgressView(console, wanted, todo) as view:
        for remote in wanted:
            fresh = remote.name in fresh_names
            if remote in todo:
                n_bytes_downloaded += remote.n_bytes - _partial_bytes(spec, remote)
                path = _fetch(spec, remote, view)
            else:
                path = _download(spec, remote)  # already here: the hub only compares ETags
            _expect_at(path, model_dir / remote.name, spec)
            entry = previous.get(remote.name)
            if not fresh and manifest.entry_matches(entry, remote, path):
                entries[remote.name] = entry  # verified by an earlier pull, untouched since
                continue
            if remote.n_bytes >= _NOTE_VERIFY_BYTES:
                view.note(f"verifying the sha256 of {remote.name}")
            sha256 = manifest.verify(path, remote)
            if sha256 is None and not fresh:
                # What was here does not match the hub (damaged since): fetch it again, once.
                view.note(f"{remote.name} does not match the hub; downloading it again")
                _remove_download(spec, path)
                path = _fetch(spec, remote, view)
                n_files_downloaded += 1
                n_bytes_downloaded += remote.n_bytes
                sha256 = manifest.verify(path, remote)
            if sha256 is None:
                _remove_download(spec, path)
                raise WeightsError(
                    f"{remote.name} from {spec.repo_id}@{commit[:8]} failed its checksum after download "
                    f"(altered on the way); it was deleted, rerun `aimsvoice pull-weights` to fetch it again"
                )
            entries[remote.name] = manifest.entry(remote, path, sha256)

        if voices_ready:
            entries.update(manifest.voice_entries(recorded))
        else:
            view.note(f"extracting {VOICES_ARCHIVE}")
            entries.update(extract_voices(model_dir / VOICES_ARCHIVE, model_dir))

    manifest.write_manifest(
        model_dir,
        repo_id=spec.repo_id,
        revision=spec.revision,
        commit=commit,
        voices_archive_etag=archive.etag,
        files=entries,
    )
    manifest.write_record(spec.repo_id, spec.revision, commit, model_dir)
    return PullResult(model_dir, spec.repo_id, commit, n_files_downloaded, n_bytes_downloaded)


def _fetch(spec: WeightsSpec, remote: RemoteFile, view: ProgressView) -> Path:
    """Download `remote` (resuming any partial bytes) with its progress bar."""
    with view.downloading(remote, lambda: _partial_bytes(spec, remote)):
        return _download(spec, remote)


def _pull_offline(spec: WeightsSpec) -> PullResult:
    """HF_HUB_OFFLINE is set: succeed only when a complete pull of this revision is already here."""
    model_dir = spec.local_dir or storage.cached_snapshot(spec.repo_id, spec.revision)
    recorded = manifest.read_manifest(model_dir) if model_dir is not None else {}
    missing = manifest.quick_missing(model_dir, recorded) if model_dir is not None and recorded else ["everything"]
    if missing:
        raise WeightsError(
            f"HF_HUB_OFFLINE=1 is set, so nothing can be downloaded, and {spec.repo_id}@{spec.revision} is not all "
            f"here (missing: {', '.join(missing[:5])}): unset HF_HUB_OFFLINE and rerun `aimsvoice pull-weights`"
        )
    assert model_dir is not None
    manifest.write_record(spec.repo_id, spec.revision, recorded["commit"], model_dir)
    return PullResult(model_dir, spec.repo_id, recorded["commit"], 0, 0, offline=True)


def _normalized(spec: WeightsSpec) -> WeightsSpec:
    local_dir = spec.local_dir.expanduser().resolve() if spec.local_dir is not None else None
    return WeightsSpec(spec.repo_id, spec.revision or DEFAULT_REVISION, local_dir, spec.token)


def _list_repo(spec: WeightsSpec) -> tuple[str, dict[str, RemoteFile]]:
    """The commit `spec.revision` points to, and the repo's files with sizes and hashes."""
    try:
        info = HfApi().model_info(spec.repo_id, revision=spec.revision, files_metadata=True, token=spec.token)
    except Exception as e:
        explained = explain(e, spec)
        if explained is None:
            raise
        raise explained from e
    listing = {}
    for sibling in info.siblings or []:
        if sibling.size is None:
            continue
        if sibling.lfs is not None:
            listing[sibling.rfilename] = RemoteFile(sibling.rfilename, sibling.lfs.size, sibling.lfs.sha256, True)
        elif sibling.blob_id is not None:
            listing[sibling.rfilename] = RemoteFile(sibling.rfilename, sibling.size, sibling.blob_id, False)
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


def _needed_names(spec: WeightsSpec, config: dict, listing: dict[str, RemoteFile]) -> list[str]:
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
        raise missing_files_error(spec, missing)
    return names


def _reject_unsafe_name(name: str, where: str) -> None:
    parts = PurePosixPath(name).parts
    if name.startswith("/") or "\\" in name or ".." in parts:
        raise WeightsError(f"{where} names {name!r}, which is not a plain file of the repo: refusing to use it")


def _download(spec: WeightsSpec, remote: RemoteFile) -> Path:
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
        partial = storage.partial_path(spec, remote)
        if partial is not None and isinstance(e, OSError) and "Consistency check failed" in str(e):
            partial.unlink(missing_ok=True)  # the bytes did not add up: resuming from them would corrupt
        explained = explain(e, spec, remote)
        if explained is None:
            raise
        raise explained from e
    return Path(path)


def _expect_at(path: Path, expected: Path, spec: WeightsSpec) -> None:
    if path != expected:  # the branch moved between listing and download: another snapshot
        raise WeightsError(
            f"{spec.repo_id}@{spec.revision} changed while pulling (got {path}, expected {expected}): "
            f"rerun `aimsvoice pull-weights` to pull the new revision"
        )


def _partial_bytes(spec: WeightsSpec, remote: RemoteFile) -> int:
    return min(storage.size_or_zero(storage.partial_path(spec, remote)), remote.n_bytes)


def _is_local_complete(spec: WeightsSpec, remote: RemoteFile, model_dir: Path) -> bool:
    if spec.local_dir is None:
        blob = storage.repo_cache_dir(spec.repo_id) / "blobs" / remote.etag
        return (model_dir / remote.name).exists() or blob.is_file()
    path = spec.local_dir / remote.name
    return path.is_file() and path.stat().st_size == remote.n_bytes


def _remove_download(spec: WeightsSpec, path: Path) -> None:
    """Delete a bad download so the next attempt fetches it again (blob and pointer in the cache)."""
    if spec.local_dir is None and path.is_symlink():
        path.resolve().unlink(missing_ok=True)
    path.unlink(missing_ok=True)
