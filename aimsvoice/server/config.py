"""What `aimsvoice serve` runs with: one frozen config, and the limits every session lives under."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..audio.format import FRAME_SIZE, SAMPLE_RATE

DEFAULT_PORT = 8998  # the reference's, and the brief's
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
SESSION_CAP = 16  # --max-sessions by default: what fits in memory, at most this many (a tick is compute-bound beyond)

# Messages. A persona_config may carry a 30 s WAV as base64; audio messages are small pieces of a stream.
MAX_MESSAGE_BYTES = 8 * 2**20  # the transport refuses anything larger (close 1009)
MAX_AUDIO_MESSAGE_BYTES = 256 * 2**10  # about 2.7 s of 16-bit audio at 48 kHz
MAX_TEXT_MESSAGE_BYTES = 64 * 2**10  # a JSON control message after persona_config
MAX_TEXT_PROMPT_CHARS = 4000  # one prompt step per token: ~1000 tokens is already 80 s of prompt in real time
MAX_VOICE_AUDIO_S = 30.0
MIN_VOICE_AUDIO_S = 1.0  # shorter audio has no measurable loudness (one 400 ms gating block and margin)
CONFIG_TIMEOUT_S = 10.0  # /ws: the persona_config must come this soon after the upgrade
SEND_TIMEOUT_S = 5.0  # a closing message a client does not take within this is given up

# Latency bounds per session, in 80 ms frames (see audio/latency.py for the policy).
INPUT_BACKLOG_FRAMES = 4  # user audio waiting for a tick: at most 320 ms, the rest is shed
INPUT_MARGIN_FRAMES = 1  # a standing backlog above this is drained: one frame of network jitter is kept
OUTPUT_QUEUE_FRAMES = 8  # agent audio a slow client has not taken: at most 640 ms, oldest dropped
TEXT_QUEUE = 256  # text pieces likewise

FRAME_S = FRAME_SIZE / SAMPLE_RATE


@dataclass(frozen=True)
class ServerConfig:
    """How `aimsvoice serve` runs.

    model, device, dtype: as for `talk` (`tiny`, a folder, or None: the pulled weights).
    host, port: where to listen; a host other than loopback needs `token_file`.
    ssl: None (plain), a folder with cert.pem and key.pem, or "self-signed" (made once, see tls.py).
    max_sessions: sessions at once, each a row of the batch; None: as many as the device's memory
        holds, at most SESSION_CAP.
    session_minutes: a session ends after this long live (None: no limit).
    idle_timeout: a session ends after this many seconds without the user speaking (None: never).
    unload_after: with no session for this many seconds the model leaves memory (None: never).
    token_file: a file holding the bearer token clients must present (header or `?token=`).
    allow_origins: browser origins allowed besides the server's own (and localhost on loopback); "*": any.
    record: a folder for one stereo WAV + JSON per session, as `talk --record` writes.
    context: the attention window, as for `talk` ("pinned" or "ring"); quantize: int8 weights, as for `talk`.
    engine, llm_url, llm_model: the tier and its reply model, as for `talk` (`auto` is decided when the server starts).
    """

    model: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    ssl: str | None = None
    max_sessions: int | None = None
    session_minutes: float | None = None
    idle_timeout: float | None = 300.0
    unload_after: float | None = None
    token_file: Path | None = None
    allow_origins: tuple[str, ...] = ()
    record: Path | None = None
    context: str = "pinned"
    quantize: str = "auto"
    engine: str = "auto"  # auto, personaplex, cascade or local, as for `talk` (each session its own cascade engine)
    llm_url: str | None = None
    llm_model: str | None = None
    input_backlog_frames: int = INPUT_BACKLOG_FRAMES
    output_queue_frames: int = OUTPUT_QUEUE_FRAMES

    @property
    def loopback(self) -> bool:
        return self.host in LOOPBACK_HOSTS

    @property
    def session_s(self) -> float | None:
        return None if self.session_minutes is None else 60.0 * self.session_minutes
