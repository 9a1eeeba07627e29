"""Conversation recording: a stereo WAV (left = user as the model heard it, right = agent) + JSON.

The step thread hands each frame pair to `Recorder.push`, which only copies into ring buffers;
another thread calls `flush` to move them to disk. The stdlib `wave` writer rewrites the header
sizes after every write, so the file on disk is a valid WAV after each flush: whatever ends the
session, everything flushed so far is playable. The WAV grows beside its path (`.NAME.partial`)
and `close` renames it over the path once complete, with the JSON sidecar: a recording already
there is replaced only by a whole new one.
"""

from __future__ import annotations

import json
import os
import wave
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AudioFileError
from ..outputs import replacing
from .format import SAMPLE_RATE
from .ringbuffer import RingBuffer

BUFFER_SECONDS = 30.0  # audio the rings hold between flushes; flushes come every 0.25 s


class Recorder:
    """Writes `path` (16-bit stereo WAV at SAMPLE_RATE) and `path.with_suffix('.json')`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.json_path = self.path.with_suffix(".json")
        self.partial_path = self.path.with_name(f".{self.path.name}.partial")
        capacity = int(BUFFER_SECONDS * SAMPLE_RATE)
        self._user = RingBuffer(capacity)
        self._agent = RingBuffer(capacity)
        self._scratch = np.zeros((capacity, 2), dtype=np.float32)
        self.n_samples = 0  # samples per channel on disk
        self.lost_samples = 0  # samples the rings could not take (only if flushing stops)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._wav = wave.open(str(self.partial_path), "wb")
        except OSError as e:
            raise AudioFileError(
                f"{self.path}: cannot write the recording ({e.strerror}); pick a writable --record path."
            ) from e
        self._wav.setnchannels(2)
        self._wav.setsampwidth(2)
        self._wav.setframerate(SAMPLE_RATE)

    def push(self, user_pcm: np.ndarray, agent_pcm: np.ndarray) -> None:
        """Step thread: queue one frame of each side (equal lengths). Never blocks."""
        n = min(self._user.writable(), self._agent.writable())
        self._user.write(user_pcm[:n])
        self._agent.write(agent_pcm[:n])
        self.lost_samples += len(user_pcm) - min(n, len(user_pcm))

    def flush(self) -> None:
        """Move everything queued to disk (one other thread calls this)."""
        n = min(self._user.readable(), self._agent.readable())
        if n == 0:
            return
        frames = self._scratch[:n]
        self._user.read_into(frames[:, 0])
        self._agent.read_into(frames[:, 1])
        pcm16 = np.round(np.clip(frames, -1.0, 1.0) * 32767.0).astype("<i2")
        self._wav.writeframes(pcm16.tobytes())
        self.n_samples += n

    def close(self, metadata: dict[str, Any]) -> None:
        """Flush, finish the WAV and write `metadata` (plus the audio layout) as the JSON sidecar."""
        self.flush()
        self._wav.close()
        os.replace(self.partial_path, self.path)
        document = {
            "audio": {
                "path": self.path.name,
                "sample_rate": SAMPLE_RATE,
                "channels": ["user (as the model heard it)", "agent"],
                "duration_s": round(self.n_samples / SAMPLE_RATE, 3),
                "lost_s": round(self.lost_samples / SAMPLE_RATE, 3),
            },
            **metadata,
        }
        with replacing(self.json_path) as tmp:
            tmp.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
