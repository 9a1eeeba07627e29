"""The one audio format aimsvoice works in: Mimi's 24 kHz mono, in 80 ms frames."""

SAMPLE_RATE = 24_000  # Hz, Mimi's rate
FRAME_RATE = 12.5  # model steps per second
FRAME_SIZE = 1920  # samples per step (80 ms)
FRAME_MS = 80.0

assert SAMPLE_RATE / FRAME_RATE == FRAME_SIZE
assert 1000.0 / FRAME_RATE == FRAME_MS


def n_frames(n_samples: int) -> int:
    """Frames needed to cover `n_samples` (the last one zero-padded)."""
    return -(-n_samples // FRAME_SIZE)
