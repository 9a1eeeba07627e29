"""Live conversations on the microphone and speakers.

pipeline.py is the step thread's work (frames in, engine, frames out, bounded latency); stats.py
the numbers a view shows; talk.py the session itself (threads, limits, recording). What shows a
session is handed in by the caller (ui.py's `LiveView` for the CLI).
"""

from .pipeline import POLL_S, LivePipeline
from .stats import LiveObserver, LiveSnapshot, LiveSummary, level_dbfs
from .talk import LiveConfig, resolve_aec, talk_live, talk_on_devices

__all__ = [
    "POLL_S", "LiveConfig", "LiveObserver", "LivePipeline", "LiveSnapshot", "LiveSummary", "level_dbfs",
    "resolve_aec", "talk_live", "talk_on_devices",
]
