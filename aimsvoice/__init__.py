"""aimsvoice: a local, full-duplex voice agent on the command line (NVIDIA PersonaPlex).

The public API, imported on first use so that `import aimsvoice` (and the CLI's start) stays
free of torch:

    from aimsvoice import load_model, Engine, PersonaPlexBatch, EngineConfig, ConversationSpec
    from aimsvoice import TalkSettings, talk_offline, run_batch, talk_batch, find_pulled_model
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

__version__ = "0.1.0"

_EXPORTS = {
    "BatchEngine": "aimsvoice.engine",
    "ConversationSpec": "aimsvoice.engine",
    "Engine": "aimsvoice.engine",
    "FrameEngine": "aimsvoice.engine",
    "PersonaPlexBatch": "aimsvoice.engine",
    "EngineConfig": "aimsvoice.engine",
    "SamplingConfig": "aimsvoice.engine",
    "StepOut": "aimsvoice.engine",
    "load_model": "aimsvoice.engine",
    "load_voice": "aimsvoice.engine",
    "ensure_tiny_model": "aimsvoice.engine",
    "TalkSettings": "aimsvoice.session",
    "talk_offline": "aimsvoice.session",
    "run_frames": "aimsvoice.session",
    "run_batch": "aimsvoice.session",
    "talk_batch": "aimsvoice.batch",
    "LiveConfig": "aimsvoice.live",
    "talk_live": "aimsvoice.live",
    "Persona": "aimsvoice.personas",
    "find_pulled_model": "aimsvoice.weights",
    "pull": "aimsvoice.weights",
    "check": "aimsvoice.weights",
    "WeightsSpec": "aimsvoice.weights",
    "AimsvoiceError": "aimsvoice.errors",
}
__all__ = sorted(_EXPORTS)


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A package's `__getattr__` that imports each exported name from its module (absolute, or
    relative to `package`) on first use."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name], package), name)

    return __getattr__


__getattr__ = lazy_exports(__name__, _EXPORTS)
