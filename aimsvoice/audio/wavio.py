"""Reading and writing audio files at the model's rate.

Decoding goes through sphn (as in moshi and the PersonaPlex reference), so a 24 kHz file gives
the model bit-identical input to the reference's: WAV (PCM, float, A-law, µ-law), FLAC, MP3 and
Ogg Vorbis through its general reader, Ogg Opus through its Opus reader. Other rates are
resampled with soxr, which keeps the duration and the timing exact (sphn's resampler delays the
signal by ~30 ms and lengthens it). A file that cannot be decoded is named by what its header
says it is. `-` is standard input or output (WAV). Writes replace a file only once complete.
"""

from __future__ import annotations

import shutil
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np
import soxr
import sphn

from ..errors import AudioFileError
from ..interrupts import deferred_interrupt
from ..outputs import STDIO, OutputPathError, replacing
from .format import SAMPLE_RATE

WAV_SUFFIXES = (".wav",)
OPUS_SUFFIXES = (".opus", ".ogg")  # written as Ogg Opus
_HEAD_BYTES = 4096
_WAV_CODECS = {1: "16/24/32-bit PCM", 2: "MS ADPCM", 3: "float", 6: "A-law", 7: "µ-law", 0x11: "IMA ADPCM",
               0x31: "GSM 6.10", 0x55: "MP3", 0xFFFE: "extensible"}


def read_wav(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read an audio file (or `-`, standard input) as float32 mono PCM in [-1, 1] at `sample_rate`.

    Any rate and channel count is accepted. With several channels the first one is used, as the
    PersonaPlex reference does; it is also the user's side of an aimsvoice `--record` file.
    """
    if str(path) == STDIO:
        return _read_stdin(sample_rate)
    path = Path(path)
    if not path.is_file():
        raise AudioFileError(f"{path}: no such audio file; check the path.")
    head = _head(path)
    try:
        with deferred_interrupt():  # Ctrl-C inside the Rust decoder would be a panic, not an exception
            pcm, file_rate = sphn.read_opus(str(path)) if _is_opus(head) else sphn.read(str(path))
    except Exception as e:  # sphn raises plain exceptions for every decode problem
        raise AudioFileError(
            f"{path}: cannot decode it ({_describe(head)}: {e}); convert it to a 16-bit PCM WAV, "
            f"e.g. `ffmpeg -i {path.name} -ar 24000 -ac 1 out.wav`."
        ) from None
    if pcm.ndim != 2 or pcm.shape[-1] == 0:
        raise AudioFileError(f"{path}: the file holds no audio samples; record or pick a non-empty file.")
    first = np.ascontiguousarray(pcm[0], dtype=np.float32)
    if file_rate != sample_rate:
        first = soxr.resample(first, file_rate, sample_rate, quality="VHQ").astype(np.float32, copy=False)
    return first


def _read_stdin(sample_rate: int) -> np.ndarray:
    data = sys.stdin.buffer.read()
    if not data:
        raise AudioFileError("standard input (--in -) is empty; pipe a WAV file into it, e.g. `cat user.wav | aimsvoice talk --in - ...`.")
    with tempfile.TemporaryDirectory(prefix="aimsvoice-stdin-") as folder:
        copy = Path(folder) / "stdin"
        copy.write_bytes(data)
        try:
            return read_wav(copy, sample_rate)
        except AudioFileError as e:
            raise AudioFileError(str(e).replace(str(copy), "standard input (--in -)")) from None


def write_wav(path: str | Path, pcm: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write float32 mono PCM by the path's suffix: .wav (default), .opus/.ogg (Ogg Opus), or `-` (WAV on standard output).

    Parent folders are made; an existing file is replaced only once the new one is complete.
    """
    pcm = np.ascontiguousarray(pcm, dtype=np.float32)
    if str(path) == STDIO:
        with tempfile.TemporaryDirectory(prefix="aimsvoice-stdout-") as folder:
            copy = write_wav(Path(folder) / "out.wav", pcm, sample_rate)
            with copy.open("rb") as f:
                shutil.copyfileobj(f, sys.stdout.buffer)
            sys.stdout.buffer.flush()
        return Path(STDIO)
    path = Path(path)
    suffix = check_audio_suffix(path)
    with deferred_interrupt(), replacing(path) as tmp:
        if suffix in OPUS_SUFFIXES:
            sphn.write_opus(str(tmp), pcm[None], sample_rate)
        else:
            sphn.write_wav(str(tmp), pcm, sample_rate)
    return path


def check_audio_suffix(path: Path, option: str = "--out") -> str:
    """The audio format a path asks for by its suffix; anything but WAV or Ogg Opus is refused with the fix."""
    suffix = path.suffix.lower()
    if suffix in WAV_SUFFIXES + OPUS_SUFFIXES or str(path) == STDIO:
        return suffix
    raise OutputPathError(
        f"{option} {path}: aimsvoice writes WAV (.wav) or Ogg Opus (.opus, .ogg), not {suffix or 'a file without a suffix'}; "
        f"name it {path.with_suffix('.wav').name}"
    )


def _head(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(_HEAD_BYTES)
    except OSError as e:
        raise AudioFileError(f"{path}: cannot read it ({e.strerror}); check its permissions.") from None


def _is_opus(head: bytes) -> bool:
    return head.startswith(b"OggS") and b"OpusHead" in head[:128]


def _describe(head: bytes) -> str:
    """What a file's first bytes say it is: the container, and for WAV and Ogg the codec."""
    if not head:
        return "an empty file"
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return f"WAV, {_wav_codec(head)}"
    if head.startswith(b"OggS"):
        return "Ogg Vorbis" if b"\x01vorbis" in head[:128] else "Ogg with an unknown codec"
    if head.startswith(b"fLaC"):
        return "FLAC"
    if head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "MP3"
    if head[4:8] == b"ftyp":
        return "MP4/M4A (AAC or ALAC)"
    if head.startswith(b"FORM") and head[8:12] in (b"AIFF", b"AIFC"):
        return "AIFF"
    if head.startswith(b"\x1aE\xdf\xa3"):
        return "WebM/Matroska"
    return "not a known audio format"


def _wav_codec(head: bytes) -> str:
    """The codec a WAV's fmt chunk names."""
    offset = 12
    while offset + 8 <= len(head):
        chunk, size = head[offset : offset + 4], struct.unpack("<I", head[offset + 4 : offset + 8])[0]
        if chunk == b"fmt " and offset + 10 <= len(head):
            code = struct.unpack("<H", head[offset + 8 : offset + 10])[0]
            return f"{_WAV_CODECS.get(code, 'codec')} (format {code:#06x})"
        offset += 8 + size + (size & 1)
    return "no fmt chunk"
