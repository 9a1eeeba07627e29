"""`aimsvoice bench`: frame compute, and Full-Duplex-Bench turn-taking measurements.

The instrument (vad.py: where the agent speaks; metrics.py: the measurements; suite.py: the
sample format) is apart from the runners (compute.py, turns.py) and the views (report.py).
"""

from .compute import ComputeReport, ComputeSettings, StageStats, run_compute
from .metrics import Interruption, PauseHandling, TurnTaking
from .suite import Sample, builtin_suite_dir, load_suite
from .turns import SampleResult, TurnsReport, TurnsSettings, evaluate, run_turns, summarize
from .vad import Segment, SpeechDetector

__all__ = [
    "ComputeReport", "ComputeSettings", "Interruption", "PauseHandling", "Sample", "SampleResult", "Segment",
    "SpeechDetector", "StageStats", "TurnTaking", "TurnsReport", "TurnsSettings", "builtin_suite_dir", "evaluate",
    "load_suite", "run_compute", "run_turns", "summarize",
]
