"""`aimsvoice pull-weights`: against a local server speaking the hub protocol, through the real CLI.

Every hub-talking test runs the installed `aimsvoice` script in its own process, so HF_ENDPOINT,
HF_HOME and HF_HUB_OFFLINE are read by huggingface_hub at import, as they are for a user.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
import requests
from huggingface_hub.constants import DOWNLOAD_CHUNK_SIZE

from aimsvoice import layout
from aimsvoice.errors import WeightsError
from aimsvoice.weights import MANIFEST_NAME, WeightsSpec, extract_voices
from aimsvoice.weights.errors import HUB_ERRORS, explain
from aimsvoice.weights.spec import RemoteFile

from fakehub import FakeHub, FakeRepo

CLI = Path(sys.executable).with_name("aimsvoice")
GOOD_TOKEN = "hf_granted"
UNGRANTED_TOKEN = "hf_not_granted"
HUB_CHUNK_BYTES = DOWNLOAD_CHUNK_SIZE  # huggingface_hub writes downloads to disk in chunks of this size


# -- building repos -----------------------------------------------------------------------------


def voices_tgz(files: dict[str, bytes], extra: Sequence[tuple[tarfile.TarInfo, bytes | None]] = ()) -> bytes:
    """A gzip tar of `files` (member name -> bytes) followed by raw `extra` members."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def voice_files(seed: int = 0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    return {f"voices/{name}.pt": rng.bytes(300 + i) for i, name in enumerate(layout.VOICE_NAMES)}


def community_voice_files(seed: int = 0) -> dict[str, bytes]:
    """Voices a fine-tune might ship instead of NVIDIA's, in the folder layouts archives come in."""
    rng = np.random.default_rng(seed)
    names = ("voices/MyCoach.pt", "./voices/narrator.wav", "personaplex-ft/voices/Calm.pt", "voices/community/deep_bass.wav")
    return {name: rng.bytes(400 + i) for i, name in enumerate(names)}


def random_repo(lm_bytes: int = 200_000, seed: int = 0, voices: dict[str, bytes] | None = None, **kwargs: object) -> FakeRepo:
    """A PersonaPlex-shaped repo of random bytes (pulling never parses the weights); `voices` are
    the members of voices.tgz, NVIDIA's eighteen by default."""
    rng = np.random.default_rng(seed)
    files = {
        layout.CONFIG_NAME: json.dumps({"dim": 64, "text_card": 400}).encode(),
        layout.LM_NAME: rng.bytes(lm_bytes),
        layout.MIMI_NAME: rng.bytes(50_000),
        layout.TEXT_TOKENIZER_NAME: rng.bytes(20_000),
        layout.VOICES_ARCHIVE: voices_tgz(voice_files(seed) if voices is None else voices),
        "README.md": b"# not needed by talk\n",
        "dist.tgz": rng.bytes(5_000),
    }
    return FakeRepo(files, **kwargs)  # type: ignore[arg-type]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- running the CLI ----------------------------------------------------------------------------


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with FakeHub() as server:
        server.valid_tokens |= {GOOD_TOKEN, UNGRANTED_TOKEN}
        server.granted_tokens.add(GOOD_TOKEN)
        yield server


@pytest.fixture
def env(tmp_path: Path, hub: FakeHub) -> dict[str, str]:
    """A user with an empty HF_HOME and config dir, talking to the fake hub."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return {
        **clean,
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "COLUMNS": "250",
    }


def run(args: list[str], env: dict[str, str], **extra_env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), *args], capture_output=True, text=True, env={**env, **extra_env}, timeout=300
    )


def one_line_error(done: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Assert a failure told in one last line (progress lines may precede it, no traceback) holding
    every needle; return that line."""
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert errors == lines[-1:], done.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def snapshot_dir(env: dict[str, str], repo: FakeRepo, repo_id: str = layout.REPO_ID) -> Path:
    return Path(env["HF_HOME"]) / "hub" / f"models--{repo_id.replace('/', '--')}" / "snapshots" / repo.commit


def find_pulled_model(env: dict[str, str]) -> str:
    """`weights.find_pulled_model()` as `talk` calls it, in a process with this user's env."""
    code = "from aimsvoice.weights import find_pulled_model; print(find_pulled_model())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def lfs_downloads(hub: FakeHub, name: str) -> int:
    return len(hub.content_requests(name))


# -- the happy path -----------------------------------------------------------------------------


def test_pull_check_find_rerun_and_repair(hub: FakeHub, env: dict[str, str], tmp_path: Path) -> None:
    repo = hub.repos[layout.REPO_ID] = random_repo(gated=True)
    done = run(["pull-weights"], env, HF_TOKEN=GOOD_TOKEN)
    assert done.returncode == 0, done.stderr
    model_dir = snapshot_dir(env, repo)
    assert str(model_dir) in done.stdout

    # What talk needs, byte for byte, and nothing else from the repo.
    for name in (layout.CONFIG_NAME, layout.LM_NAME, layout.MIMI_NAME, layout.TEXT_TOKENIZER_NAME, layout.VOICES_ARCHIVE):
        assert (model_dir / name).read_bytes() == repo.files[name], name
    assert not (model_dir / "README.md").exists() and not (model_dir / "dist.tgz").exists()
    for member, data in voice_files().items():
        assert (model_dir / member).read_bytes() == data
    assert sorted(p.name for p in (model_dir / layout.VOICES_DIR).iterdir()) == sorted(
        f"{n}.pt" for n in layout.VOICE_NAMES
    )
    manifest = json.loads((model_dir / MANIFEST_NAME).read_text())
    assert manifest["commit"] == repo.commit
    assert manifest["files"][layout.LM_NAME]["sha256"] == sha256(repo.files[layout.LM_NAME])
    assert manifest["files"][layout.CONFIG_NAME]["sha256"] == sha256(repo.files[layout.CONFIG_NAME])
    assert len(manifest["files"]) == 5 + len(layout.VOICE_NAMES)
    assert find_pulled_model(env) == str(model_dir)

    # Rerun with the stored login instead of HF_TOKEN: nothing is transferred again.
    (Path(env["HF_HOME"]) / "token").write_text(GOOD_TOKEN)
    done = run(["pull-weights"], env)
    assert done.returncode == 0, done.stderr
    assert "0 files downloaded" in done.stdout
    assert lfs_downloads(hub, layout.LM_NAME) == 1

    # Offline: --check verifies everything; pull accepts what is here.
    done = run(["pull-weights", "--check"], env, HF_HUB_OFFLINE="1")
    assert done.returncode == 0, done.stderr
    assert f"model: {model_dir}" in done.stdout
    assert done.stdout.count(" ok ") == 5 + len(layout.VOICE_NAMES)
    done = run(["pull-weights"], env, HF_HUB_OFFLINE="1")
    assert done.returncode == 0 and "already in" in done.stdout, done.stderr

    # Damage: --check names what is wrong; a pull repairs it.
    mimi = (model_dir / layout.MIMI_NAME).resolve()  # a blob of the hub cache
    damaged = bytearray(mimi.read_bytes())
    damaged[100] ^= 0x01
    mimi.write_bytes(bytes(damaged))
    (model_dir / "voices" / "VARM2.pt").unlink()
    voice = model_dir / "voices" / "NATF0.pt"
    voice.write_bytes(bytes(reversed(voice.read_bytes())))  # same size, other bytes
    done = run(["pull-weights", "--check"], env, HF_HUB_OFFLINE="1")
    line = one_line_error(
        done, "3 of 23", f"{layout.MIMI_NAME} (corrupt)", "voices/NATF0.pt (corrupt)", "voices/VARM2.pt (missing)", "pull-weights"
    )
    assert "corrupt" in done.stdout and "missing" in done.stdout, line
    done = run(["pull-weights"], env)
    assert done.returncode == 0, done.stderr
    assert lfs_downloads(hub, layout.MIMI_NAME) == 2
    assert run(["pull-weights", "--check"], env, HF_HUB_OFFLINE="1").returncode == 0


def test_pull_other_repo_into_dir_with_token_flag(hub: FakeHub, env: dict[str, str], tmp_path: Path) -> None:
    repo = hub.repos["someone/personaplex-ft"] = random_repo(gated=True, seed=1)
    del repo.files[layout.CONFIG_NAME]  # optional, as for the loader: the default file names apply
    target = tmp_path / "models" / "personaplex"
    done = run(["pull-weights", "--repo", "someone/personaplex-ft", "--dir", str(target), "--token", GOOD_TOKEN], env)
    assert done.returncode == 0, done.stderr
    assert (target / layout.LM_NAME).read_bytes() == repo.files[layout.LM_NAME]
    assert (target / "voices" / "NATF2.pt").read_bytes() == voice_files(1)["voices/NATF2.pt"]
    assert not (Path(env["HF_HOME"]) / "hub").exists() or not any((Path(env["HF_HOME"]) / "hub").glob("models--*"))
    assert all(r.authorization == f"Bearer {GOOD_TOKEN}" for r in hub.requests if "/resolve/" in r.path)
    assert not (target / layout.CONFIG_NAME).exists()
    assert len(json.loads((target / MANIFEST_NAME).read_text())["files"]) == 4 + len(layout.VOICE_NAMES)
    assert find_pulled_model(env) == str(target)
    # --check finds it from the record, offline, and with --dir too.
    for args in (["pull-weights", "--check"], ["pull-weights", "--check", "--dir", str(target)]):
        done = run(args, env, HF_HUB_OFFLINE="1")
        assert done.returncode == 0 and f"model: {target}" in done.stdout, done.stderr


def test_pull_keeps_every_voice_the_archive_holds(hub: FakeHub, env: dict[str, str]) -> None:
    """A fine-tune's own voices, in nested folders and without NVIDIA's eighteen: all pulled, all checked."""
    voices = community_voice_files()
    not_voices = {"voices/._MyCoach.pt": b"macOS resource fork", "voices/README.txt": b"about", "samples/Stray.pt": b"x"}
    repo = hub.repos[layout.REPO_ID] = random_repo(voices={**voices, **not_voices})
    done = run(["pull-weights"], env)
    assert done.returncode == 0, done.stderr
    model_dir = snapshot_dir(env, repo)
    landed = {f"voices/{PurePosixPath(member).name}": data for member, data in voices.items()}
    assert sorted(f"voices/{p.name}" for p in (model_dir / layout.VOICES_DIR).iterdir()) == sorted(landed)
    for name, data in landed.items():
        assert (model_dir / name).read_bytes() == data, name
    manifest = json.loads((model_dir / MANIFEST_NAME).read_text())
    recorded = {k: v["sha256"] for k, v in manifest["files"].items() if k.startswith("voices/")}
    assert recorded == {name: sha256(data) for name, data in landed.items()}

    done = run(["pull-weights", "--check"], env, HF_HUB_OFFLINE="1")
    assert done.returncode == 0, done.stderr
    statuses = {line.split()[1]: line.split()[0] for line in done.stdout.splitlines() if line.startswith("  ")}
    assert statuses == {name: "ok" for name in manifest["files"]} and len(statuses) == 5 + len(landed)

    # A community voice deleted, another changed in place: --check names both; a pull re-extracts them.
    (model_dir / "voices" / "narrator.wav").unlink()
    coach = model_dir / "voices" / "MyCoach.pt"
    coach.write_bytes(bytes(reversed(coach.read_bytes())))
    done = run(["pull-weights", "--check"], env, HF_HUB_OFFLINE="1")
    one_line_error(done, "2 of 9", "voices/MyCoach.pt (corrupt)", "voices/narrator.wav (missing)", "pull-weights")
    done = run(["pull-weights"], env)
    assert done.returncode == 0, done.stderr
    assert lfs_downloads(hub, layout.VOICES_ARCHIVE) == 1  # extracted again from the archive already here
    assert (model_dir / "voices" / "narrator.wav").read_bytes() == landed["voices/narrator.wav"]
    assert coach.read_bytes() == landed["voices/MyCoach.pt"]
    assert run(["pull-weights", "--check"], env, HF_HUB_OFFLINE="1").returncode == 0


def test_archive_without_any_voice_is_refused(hub: FakeHub, env: dict[str, str]) -> None:
    not_voices = {"voices/README.txt": b"about", "samples/NATF0.pt": b"not under voices/", "voices/._NATF0.pt": b"fork"}
    repo = hub.repos[layout.REPO_ID] = random_repo(voices=not_voices)
    one_line_error(run(["pull-weights"], env), f"{layout.VOICES_ARCHIVE} holds no voice prompt", "--repo")
    model_dir = snapshot_dir(env, repo)
    assert not (model_dir / layout.VOICES_DIR).exists() and not (model_dir / MANIFEST_NAME).exists()
    assert find_pulled_model(env) == "None"


def test_nothing_pulled(env: dict[str, str]) -> None:
    assert find_pulled_model(env) == "None"
    one_line_error(run(["pull-weights", "--check"], env, HF_HUB_OFFLINE="1"), "no pulled", "run `aimsvoice pull-weights`")
    one_line_error(run(["pull-weights"], env, HF_HUB_OFFLINE="1"), "HF_HUB_OFFLINE=1", "unset HF_HUB_OFFLINE")
    done = run(["pull-weights", "--check", "--token", "x"], env)
    assert done.returncode == 2 and "--check works offline" in done.stderr


def test_help_explains_the_license_step(env: dict[str, str]) -> None:
    done = run(["pull-weights", "--help"], env)
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    for needle in ("NVIDIA Open Model License", layout.MODEL_PAGE_URL, "hf auth login", "HF_TOKEN", "--token", "--check"):
        assert needle in text, needle


# -- failures a person can act on -----------------------------------------------------------------


def test_gated_license_not_accepted(hub: FakeHub, env: dict[str, str]) -> None:
    hub.repos[layout.REPO_ID] = random_repo(gated=True)
    line = one_line_error(run(["pull-weights", "--token", UNGRANTED_TOKEN], env), layout.MODEL_PAGE_URL, "accept")
    assert "License" in line
    # No token at all: the hub answers 401 GatedRepo; the fix also says how to log in.
    one_line_error(run(["pull-weights"], env), layout.MODEL_PAGE_URL, "hf auth login", "HF_TOKEN")
    assert lfs_downloads(hub, layout.LM_NAME) == 0


def test_invalid_token(hub: FakeHub, env: dict[str, str]) -> None:
    hub.repos[layout.REPO_ID] = random_repo(gated=True)
    one_line_error(run(["pull-weights"], env, HF_TOKEN="hf_revoked"), "401", "token", "hf auth login")


def test_repo_revision_or_file_not_found(hub: FakeHub, env: dict[str, str]) -> None:
    repo = hub.repos[layout.REPO_ID] = random_repo()
    one_line_error(run(["pull-weights", "--repo", "nobody/nothing"], env), "nobody/nothing", "not found", "--repo")
    one_line_error(run(["pull-weights", "--revision", "v9"], env), "'v9' not found", "--revision")
    del repo.files[layout.VOICES_ARCHIVE]
    one_line_error(run(["pull-weights"], env), f"has no {layout.VOICES_ARCHIVE}", "--repo")


def test_file_vanishing_after_listing(hub: FakeHub, env: dict[str, str]) -> None:
    """The resolve endpoint answers 404 EntryNotFound for a file the listing showed."""
    hub.repos[layout.REPO_ID] = random_repo()
    hub.unresolvable.add(layout.MIMI_NAME)
    one_line_error(run(["pull-weights"], env), f"has no {layout.MIMI_NAME}")


def test_unreachable_hub(env: dict[str, str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    one_line_error(run(["pull-weights"], env, HF_ENDPOINT=closed), "cannot reach", "HF_HUB_OFFLINE=1")


def test_interrupted_download_resumes(hub: FakeHub, env: dict[str, str]) -> None:
    repo = hub.repos[layout.REPO_ID] = random_repo(lm_bytes=HUB_CHUNK_BYTES + 300_000)
    hub.cut_after[layout.LM_NAME] = HUB_CHUNK_BYTES + 1_000  # the connection drops past the first chunk
    one_line_error(run(["pull-weights"], env), f"download of {layout.LM_NAME} was interrupted", "resume")
    partial = Path(env["HF_HOME"], "hub", "models--nvidia--personaplex-7b-v1", "blobs", f"{repo.etag(layout.LM_NAME)}.incomplete")
    kept = partial.stat().st_size
    assert 0 < kept < len(repo.files[layout.LM_NAME])

    done = run(["pull-weights"], env)
    assert done.returncode == 0, done.stderr
    first, second = hub.content_requests(layout.LM_NAME)
    assert first.range is None and second.range == f"bytes={kept}-"
    assert (snapshot_dir(env, repo) / layout.LM_NAME).read_bytes() == repo.files[layout.LM_NAME]
    assert run(["pull-weights", "--check"], env, HF_HUB_OFFLINE="1").returncode == 0


def test_interrupted_download_into_dir_resumes(hub: FakeHub, env: dict[str, str], tmp_path: Path) -> None:
    """--dir keeps unfinished downloads in the hub's local-dir bookkeeping; they are found and resumed."""
    repo = hub.repos[layout.REPO_ID] = random_repo(lm_bytes=HUB_CHUNK_BYTES + 300_000)
    hub.cut_after[layout.LM_NAME] = HUB_CHUNK_BYTES + 1_000
    target = tmp_path / "model"
    line = one_line_error(run(["pull-weights", "--dir", str(target)], env), f"download of {layout.LM_NAME} was interrupted")
    kept = int(re.search(r"\(([\d,]+) of", line)[1].replace(",", ""))  # type: ignore[index]
    assert 0 < kept < len(repo.files[layout.LM_NAME])

    done = run(["pull-weights", "--dir", str(target)], env)
    assert done.returncode == 0, done.stderr
    assert "resuming at" in done.stderr
    first, second = hub.content_requests(layout.LM_NAME)
    assert first.range is None and second.range == f"bytes={kept}-"
    assert (target / layout.LM_NAME).read_bytes() == repo.files[layout.LM_NAME]
    assert run(["pull-weights", "--check", "--dir", str(target)], env, HF_HUB_OFFLINE="1").returncode == 0


def test_full_disk_is_refused_before_downloading(hub: FakeHub, env: dict[str, str]) -> None:
    repo = hub.repos[layout.REPO_ID] = random_repo()
    hub.advertised_size[layout.LM_NAME] = 10**18  # no disk here has an exabyte free
    f = repo.files
    needed = 10**18 + len(f[layout.MIMI_NAME]) + len(f[layout.TEXT_TOKENIZER_NAME]) + 2 * len(f[layout.VOICES_ARCHIVE])
    one_line_error(run(["pull-weights"], env), "not enough free disk space", f"needs {needed:,} bytes", "--dir")
    assert all(lfs_downloads(hub, name) == 0 for name in f if repo.is_lfs(name))


def test_altered_transfer_is_deleted_not_kept(hub: FakeHub, env: dict[str, str]) -> None:
    repo = hub.repos[layout.REPO_ID] = random_repo()
    hub.corrupt.add(layout.MIMI_NAME)
    one_line_error(run(["pull-weights"], env), f"{layout.MIMI_NAME}", "failed its checksum", "deleted")
    blobs = Path(env["HF_HOME"], "hub", "models--nvidia--personaplex-7b-v1", "blobs")
    assert not (blobs / repo.etag(layout.MIMI_NAME)).exists()
    assert not (snapshot_dir(env, repo) / MANIFEST_NAME).exists()
    assert find_pulled_model(env) == "None"


def test_malicious_voices_archive_is_refused(hub: FakeHub, env: dict[str, str], tmp_path: Path) -> None:
    repo = hub.repos[layout.REPO_ID] = random_repo()
    evil = tarfile.TarInfo("voices/../../../../evil.pt")
    evil.size = 4
    repo.files[layout.VOICES_ARCHIVE] = voices_tgz(voice_files(), [(evil, b"evil")])
    one_line_error(run(["pull-weights"], env), "unsafe voices.tgz", "evil.pt")
    model_dir = snapshot_dir(env, repo)
    assert not (model_dir / layout.VOICES_DIR).exists()
    assert not any(p.name == "evil.pt" for p in tmp_path.rglob("*"))


# -- voices.tgz extraction, in process ------------------------------------------------------------


def special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def regular(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


@pytest.mark.parametrize(
    "member, complaint",
    [
        (regular("/tmp/NATF0.pt"), "absolute path"),
        (regular("voices/../../NATF0.pt"), "outside its folder"),
        (regular("../NATF0.pt"), "outside its folder"),
        (special("voices/NATF1.pt", tarfile.SYMTYPE, "/etc/passwd"), "is a link"),
        (special("voices/NATF1.pt", tarfile.LNKTYPE, "voices/NATF0.pt"), "is a link"),
        (special("voices/evil", tarfile.SYMTYPE, "../../outside"), "is a link"),
        (special("voices/tty", tarfile.CHRTYPE), "device or special"),
        (special("voices/disk", tarfile.BLKTYPE), "device or special"),
        (special("voices/pipe", tarfile.FIFOTYPE), "device or special"),
        (regular("voices/NATF0.pt", b"second copy"), "appears twice"),
        (regular("personaplex/voices/NATF0.pt", b"same name, other folder"), "appears twice"),
    ],
)
def test_unsafe_members_refuse_the_whole_archive(tmp_path: Path, member: tuple, complaint: str) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    archive = model_dir / "voices.tgz"
    archive.write_bytes(voices_tgz(voice_files(), [member]))
    with pytest.raises(WeightsError, match=complaint):
        extract_voices(archive, model_dir)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["model", "voices.tgz"]  # nothing written anywhere


def test_every_voice_prompt_is_kept_and_nothing_else(tmp_path: Path) -> None:
    community = community_voice_files()
    files = {
        **voice_files(),
        **community,
        "voices/NATF0.wav": b"RIFF....",
        "./voices/VARF4.wav": b"RIFF",
        "VARM9.pt": b"flat archive",  # at the top: the archive itself is the voices folder
        "voices/README.txt": b"hi",
        "voices/._MyCoach.pt": b"AppleDouble",
        "voices/NATM0.pt.bak": b"old",
        "other/NATM1.pt": b"elsewhere",
        "run.sh": b"#!/bin/sh",
    }
    archive = tmp_path / "voices.tgz"
    archive.write_bytes(voices_tgz(files, [special("voices", tarfile.DIRTYPE)]))
    entries = extract_voices(archive, tmp_path)
    expected = [f"{n}.pt" for n in layout.VOICE_NAMES] + [PurePosixPath(m).name for m in community]
    expected += ["NATF0.wav", "VARF4.wav", "VARM9.pt"]
    assert sorted(p.name for p in (tmp_path / "voices").iterdir()) == sorted(expected)
    assert sorted(entries) == sorted(f"voices/{name}" for name in expected)
    bass = community["voices/community/deep_bass.wav"]
    assert (tmp_path / "voices" / "deep_bass.wav").read_bytes() == bass
    assert (entries["voices/deep_bass.wav"]["size"], entries["voices/deep_bass.wav"]["sha256"]) == (len(bass), sha256(bass))
    assert (tmp_path / "voices" / "NATM1.pt").read_bytes() == files["voices/NATM1.pt"]
    assert not (tmp_path / "run.sh").exists() and not (tmp_path / "other").exists()


def test_archive_without_voices_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "voices.tgz"
    archive.write_bytes(voices_tgz({"voices/README.txt": b"hi", "other/NATF0.pt": b"elsewhere"}))
    with pytest.raises(WeightsError, match="holds no voice prompt") as raised:
        extract_voices(archive, tmp_path)
    assert "\n" not in str(raised.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["voices.tgz"]


def test_not_a_tar_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "voices.tgz"
    archive.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(WeightsError, match="cannot read"):
        extract_voices(archive, tmp_path)


# -- the hub-error table -------------------------------------------------------------------------


def test_hub_error_table_puts_subclasses_before_their_bases() -> None:
    kinds = [kind for kind, _ in HUB_ERRORS]
    for i, earlier in enumerate(kinds):
        for later in kinds[i + 1 :]:
            assert not issubclass(later, earlier), f"{later.__name__} would never be reached after {earlier.__name__}"


LM = RemoteFile(layout.LM_NAME, 1_000, "0" * 64, True)


@pytest.mark.parametrize(
    "error, remote, needle",
    [
        (requests.ConnectionError("refused"), None, "cannot reach the Hugging Face hub"),
        (requests.ConnectionError("reset"), LM, f"download of {layout.LM_NAME} was interrupted (0 of 1,000 bytes kept)"),
        (requests.exceptions.ChunkedEncodingError("cut"), LM, "was interrupted"),
        (OSError("Consistency check failed: file should be of size 1000 but has size 10"), LM, "was interrupted"),
        (OSError(errno.ENOSPC, "No space left on device"), LM, f"disk filled up while downloading {layout.LM_NAME}"),
        (requests.exceptions.ChunkedEncodingError("cut"), None, None),  # while listing: not ours to explain
        (OSError(errno.EACCES, "Permission denied"), LM, None),
        (ValueError("a bug"), LM, None),
    ],
)
def test_hub_errors_are_explained_by_the_first_matching_row(
    tmp_path: Path, error: Exception, remote: RemoteFile | None, needle: str | None
) -> None:
    explained = explain(error, WeightsSpec(local_dir=tmp_path), remote)
    if needle is None:
        assert explained is None
    else:
        assert explained is not None and needle in str(explained), explained


# -- the pulled tiny model talks ------------------------------------------------------------------


def test_pulled_tiny_model_talks(tiny_dir: Path, hub: FakeHub, env: dict[str, str], tmp_path: Path) -> None:
    """The issue's bar: pull a real (tiny) model from the hub, then `talk --model` on the pulled dir."""
    files = {p.name: p.read_bytes() for p in tiny_dir.iterdir() if p.is_file()}
    voices = {f"voices/{p.name}": p.read_bytes() for p in (tiny_dir / layout.VOICES_DIR).iterdir()}
    files[layout.VOICES_ARCHIVE] = voices_tgz(voices)
    repo = hub.repos[layout.REPO_ID] = FakeRepo(files, gated=True)
    done = run(["pull-weights", "--token", GOOD_TOKEN], env)
    assert done.returncode == 0, done.stderr
    model_dir = snapshot_dir(env, repo)
    config = json.loads(files[layout.CONFIG_NAME])
    assert (model_dir / config["mimi_config_name"]).is_file()  # named by config.json, so pulled too

    from aimsvoice.audio import read_wav, write_wav

    t = np.arange(24_000) / 24_000
    user = write_wav(tmp_path / "user.wav", (0.2 * np.sin(2 * np.pi * 200 * t)).astype(np.float32))
    out = tmp_path / "agent.wav"
    done = run(["talk", "--model", str(model_dir), "--in", str(user), "--out", str(out), "--seed", "0"], env, HF_HUB_OFFLINE="1")
    assert done.returncode == 0, done.stderr
    assert read_wav(out).shape == (24_000,)
    assert find_pulled_model(env) == str(model_dir)  # what `talk` without --model uses
