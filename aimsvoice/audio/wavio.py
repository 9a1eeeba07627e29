"""Reading and writing audio files at the model's rate.

Decoding goes through sphn (as in moshi and the PersonaPlex reference), so a 24 kHz file gives
the model bit-identical input to the reference's. Other rates are resampled with soxr, which keeps
the duration and the timing exact (sphn's resampler delays the signal by ~30 ms and lengthens it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soxr
import sphn

from ..errors import AudioFileError
from .format import SAMPLE_RATE


def read_wav(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read an audio file as float32 mono PCM in [-1, 1] at `sample_rate`.

    Any rate and channel count is accepted. With several channels the first one is used, as the
    PersonaPlex reference does; it is also the user's side of an aimsvoice `--record` file.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioFileError(f"{path}: no such audio file; check the path.")
    try:
        pcm, file_rate = sphn.read(str(path))
    except Exception as e:  # sphn raises plain exceptions for every decode problem
        raise AudioFileError(f"{path}: cannot read audio ({e}); give a WAV, FLAC, MP3 or OGG file.") from e
    if pcm.ndim != 2 or pcm.shape[-1] == 0:
        raise AudioFileError(f"{path}: the file holds no audio samples; record or pick a non-empty file.")
    first = np.ascontiguousarray(pcm[0], dtype=np.float32)
    if file_rate != sample_rate:
        first = soxr.resample(first, file_rate, sample_rate, quality="VHQ").astype(np.float32, copy=False)
    return first


def write_wav(path: str | Path, pcm: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write float32 mono PCM as a WAV file, creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sphn.write_wav(str(path), np.ascontiguousarray(pcm, dtype=np.float32), sample_rate)
    return path
