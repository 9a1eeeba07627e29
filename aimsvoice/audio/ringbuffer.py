"""Single-producer/single-consumer ring buffer of float32 samples, safe between two threads.

One thread writes (an audio callback or the step thread), one other thread reads. Neither side
ever blocks, takes a lock or allocates sample memory: the storage is allocated once. Each side
owns one monotonically increasing position (`_written` by the producer, `_read` by the
consumer) and only reads the other's. A side publishes its position after it has copied the
samples, and a Python attribute store is atomic under the GIL, so the other side never sees a
position ahead of the data behind it.
"""

from __future__ import annotations

import numpy as np


class RingBuffer:
    """A fixed-capacity SPSC FIFO of float32 samples.

    `write` is the producer's, `read_into` the consumer's; `readable` and `writable` may be called
    from either thread and are exact for the caller's own side (the other side can only make more
    room or more data).
    """

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError(f"ring buffer capacity must be positive, got {capacity}")
        self.capacity = capacity
        self._buf = np.zeros(capacity, dtype=np.float32)
        self._written = 0  # total samples ever written; only the producer stores it
        self._read = 0  # total samples ever consumed; only the consumer stores it

    def readable(self) -> int:
        """Samples waiting to be read."""
        return self._written - self._read

    def writable(self) -> int:
        """Free space, in samples."""
        return self.capacity - (self._written - self._read)

    def write(self, pcm: np.ndarray) -> int:
        """Producer: copy as much of `pcm` (1-D, any float dtype, any stride) as fits.

        Returns the number of samples written; the rest of `pcm` is not stored (the caller
        counts it as dropped).
        """
        written = self._written
        n = min(len(pcm), self.capacity - (written - self._read))
        if n <= 0:
            return 0
        start = written % self.capacity
        first = min(n, self.capacity - start)
        self._buf[start : start + first] = pcm[:first]
        if first < n:
            self._buf[: n - first] = pcm[first:n]
        self._written = written + n
        return n

    def read_into(self, out: np.ndarray) -> int:
        """Consumer: fill the start of `out` (1-D, any stride) with the oldest samples.

        Returns how many samples were copied (fewer than len(out) when the buffer runs dry; the
        rest of `out` is left untouched).
        """
        read = self._read
        n = min(len(out), self._written - read)
        if n <= 0:
            return 0
        start = read % self.capacity
        first = min(n, self.capacity - start)
        out[:first] = self._buf[start : start + first]
        if first < n:
            out[first:n] = self._buf[: n - first]
        self._read = read + n
        return n
