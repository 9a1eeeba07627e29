"""Audio side: the frame format, wav I/O and resampling. Knows nothing of models."""

from .format import FRAME_MS, FRAME_RATE, FRAME_SIZE, SAMPLE_RATE, n_frames
from .wavio import read_wav, write_wav

__all__ = ["FRAME_MS", "FRAME_RATE", "FRAME_SIZE", "SAMPLE_RATE", "n_frames", "read_wav", "write_wav"]
