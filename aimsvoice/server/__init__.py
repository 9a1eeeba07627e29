"""`aimsvoice serve`: PersonaPlex over WebSocket, several sessions on one device, governed.

The pieces, from the wire inwards:

- app.py: the ASGI app (Starlette): `/api/chat` (NVIDIA's reference protocol, for PersonaPlex
  and Moshi clients), `/ws` (the brief's JSON + raw audio protocol), `/healthz`, `/metrics`;
  token and origin checks (access.py); each WebSocket's receiver and sender tasks. No engine code.
- protocols.py: both protocols' messages and audio codecs (Opus, PCM with resampling); pure.
- conditioning.py: a client's request -> the `ConversationSpec` `talk --persona` would build.
- scheduler.py: the tick thread, which owns the batched engine: every live session is a row,
  one real-time tick per 80 ms steps them all, joining sessions' prompts run in the slack
  (pacing.py), late clients hear silence, slow clients lose their oldest audio (sessions.py).
- governance.py: admission, session length, idle timeout, warm/cold (pure, on a given clock).
- metrics.py: Prometheus metrics; tls.py: certificates; run.py: `serve()`, uvicorn.

The app knows nothing of uvicorn and the scheduler nothing of sockets: `create_app(config)` is a
plain ASGI app with the scheduler in its lifespan, for uvicorn here or another ASGI host (one
replica per GPU) elsewhere.
"""

from __future__ import annotations

from .. import lazy_exports

_EXPORTS = {
    "ServerConfig": ".config",
    "create_app": ".app",
    "serve": ".run",
    "uvicorn_server": ".run",
    "bind": ".run",
    "resolve_tls": ".tls",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
