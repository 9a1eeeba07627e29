"""Extract the voice prompts of voices.tgz into the model's `voices/` folder, safely.

The archive is untrusted: any absolute name, `..`, link, device or other special member refuses
the whole archive before anything is written. Members are copied by hand, never with tarfile's
extract, so nothing can land outside `voices/`, and the old `voices/` is replaced only once the
new one is complete.

A voice prompt is a regular file ending in .pt (a prompt state) or .wav (audio to encode), at the
top of the archive or anywhere under a folder named `voices`, whatever its name: NVIDIA's eighteen
or the voices a fine-tune ships. Each lands flat in `voices/` under its file name, which is how
`talk --voice NAME` finds it, so two members with one file name refuse the archive. Hidden files
are not voices (macOS tar adds `._NAME.pt` beside each file). An archive without a single voice
is refused.
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import uuid
from pathlib import Path, PurePosixPath

from ..errors import WeightsError
from ..layout import REPO_ID, VOICE_SUFFIXES, VOICES_DIR
from .manifest import HASH_CHUNK_BYTES, Entry
from .storage import check_free_space


def extract_voices(archive: Path, model_dir: Path) -> dict[str, Entry]:
    """Extract every voice prompt of `archive` into `model_dir/voices`, refusing unsafe archives.

    Returns manifest entries ("voices/NAME.pt" -> size, sha256 and mtime_ns). Raises WeightsError
    for an unsafe, unreadable or truncated archive, one without any voice, or too little disk.
    """
    kept = _scan(archive)
    check_free_space(model_dir, sum(member.size for member in kept.values()))
    staging = model_dir / f".{VOICES_DIR}-{uuid.uuid4().hex[:8]}.partial"
    staging.mkdir(parents=True)
    entries: dict[str, Entry] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = _voice_file_name(member)
                if name is None:
                    continue
                entries[f"{VOICES_DIR}/{name}"] = _copy_member(tar, member, staging / name, archive)
        _swap_in(staging, model_dir / VOICES_DIR)
        for key, entry in entries.items():
            entry["mtime_ns"] = (model_dir / key).stat().st_mtime_ns
    except (tarfile.TarError, EOFError, OSError) as e:
        raise WeightsError(f"cannot extract {archive} ({e}): delete it and rerun `aimsvoice pull-weights`") from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return entries


def _scan(archive: Path) -> dict[str, tarfile.TarInfo]:
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
                    raise WeightsError(
                        f"unsafe {archive.name}: {name} appears twice ({kept[name].name!r} and {member.name!r}); "
                        f"refusing to extract it"
                    )
                kept[name] = member
    except (tarfile.TarError, EOFError, OSError) as e:
        raise WeightsError(f"cannot read {archive} ({e}): delete it and rerun `aimsvoice pull-weights`") from e
    if not kept:
        suffixes = " or ".join(VOICE_SUFFIXES)
        raise WeightsError(
            f"{archive.name} holds no voice prompt (no {suffixes} file under {VOICES_DIR}/) and talk needs at least "
            f"one: check that --repo is a PersonaPlex repo (default {REPO_ID})"
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
    """The file name a member is kept under in `voices/`, or None when it is not a voice prompt."""
    parts = PurePosixPath(member.name).parts
    if not member.isfile() or not parts:
        return None
    *folders, name = parts
    in_voices = not folders or VOICES_DIR in folders
    if not in_voices or name.startswith(".") or PurePosixPath(name).suffix not in VOICE_SUFFIXES:
        return None
    return name


def _copy_member(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path, archive: Path) -> Entry:
    """Copy one regular member to `target`, hashing on the way; its manifest entry (without mtime)."""
    source = tar.extractfile(member)
    assert source is not None  # a regular file, checked by the scan
    digest = hashlib.sha256()
    with open(target, "wb") as out:
        remaining = member.size
        while remaining > 0 and (chunk := source.read(min(HASH_CHUNK_BYTES, remaining))):
            out.write(chunk)
            digest.update(chunk)
            remaining -= len(chunk)
    if remaining:
        raise WeightsError(f"{archive.name} is truncated at {target.name}: delete {archive} and rerun `aimsvoice pull-weights`")
    return {"size": member.size, "sha256": digest.hexdigest()}


def _swap_in(staging: Path, target: Path) -> None:
    old = target.with_name(f".{target.name}-{uuid.uuid4().hex[:8]}.old")
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)
