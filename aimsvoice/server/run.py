"""`aimsvoice serve`: check everything that can be checked, load the model, then let uvicorn serve the app."""

from __future__ import annotations

import logging
import socket
from dataclasses import replace
from typing import Callable

import uvicorn
from starlette.applications import Starlette

from ..errors import AimsvoiceError, ServerError
from ..engine import check_model
from ..session import TalkSettings, choose_engine, resolve_model_dir
from .app import create_app
from .config import MAX_MESSAGE_BYTES, SEND_TIMEOUT_S, ServerConfig
from .scheduler import cascade_engine_factory
from .tls import TlsFiles, resolve_tls

PING_INTERVAL_S = 20.0  # a client gone without a word (network lost) is noticed within ~40 s
PING_TIMEOUT_S = 20.0
SEND_BUFFER_BYTES = 64 * 1024
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def serve(config: ServerConfig, *, echo: Callable[[str], None] = print) -> None:
    """Run the server until Ctrl-C (or SIGTERM). Raises ServerError (and other AimsvoiceErrors) before
    listening when the config cannot work: an exposed host without a token, TLS files missing, the
    port taken, the model missing or failing to load."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    tls = resolve_tls(config.ssl)
    if tls is not None:
        made = "made a self-signed certificate: " if tls.created else "certificate: "
        echo(f"{made}{tls.cert} (SHA-256 {tls.fingerprint})")
    choice = choose_engine(TalkSettings(
        model=config.model, device=config.device, dtype=config.dtype, quantize=config.quantize, engine=config.engine, llm_url=config.llm_url,
        llm_model=config.llm_model,
    ))
    if choice.auto:
        echo(choice.line())
    factory, model_dir = None, None
    if choice.tier == "personaplex":
        model_dir = resolve_model_dir(config.model)
        check_model(model_dir)
    else:  # every session its own cascade (or local) engine, a row of FrameRows
        config = replace(config, engine=choice.tier)
        factory = cascade_engine_factory(config, choice.tier)
    if config.record is not None:
        _check_writable(config.record)
    app = create_app(config, model_dir=model_dir, engine_factory=factory)
    sock = bind(config.host, config.port)
    scheduler = app.state.server.scheduler
    echo(f"loading the model from {model_dir} ..." if model_dir is not None else f"starting the {choice.tier} tier ...")
    scheduler.start()
    try:
        scheduler.wait_ready()
    except AimsvoiceError:
        sock.close()
        raise
    except Exception as e:
        sock.close()
        raise ServerError(f"the model failed to load: {e}") from e
    scheme = "https" if tls is not None else "http"
    ws = "wss" if tls is not None else "ws"
    host = f"[{config.host}]" if ":" in config.host else config.host
    port = sock.getsockname()[1]
    health = scheduler.health()
    echo(
        f"serving {health['sessions_max']} sessions at most on {health['device']}: {scheme}://{host}:{port}/ (the web page), "
        f"{ws}://{host}:{port}/api/chat "
        f"(PersonaPlex/Moshi clients), {ws}://{host}:{port}/ws, {scheme}://{host}:{port}/healthz, /metrics; Ctrl-C stops"
    )
    uvicorn_server(app, tls).run(sockets=[sock])


def uvicorn_server(app: Starlette, tls: TlsFiles | None = None, log_level: str = "info") -> uvicorn.Server:
    """uvicorn for the app: message size cap, pings, no compression (audio does not compress), our logging."""
    config = uvicorn.Config(
        app,
        lifespan="on",
        ws_max_size=MAX_MESSAGE_BYTES,
        ws_per_message_deflate=False,
        ws_ping_interval=PING_INTERVAL_S,
        ws_ping_timeout=PING_TIMEOUT_S,
        timeout_graceful_shutdown=int(SEND_TIMEOUT_S),
        ssl_certfile=str(tls.cert) if tls is not None else None,
        ssl_keyfile=str(tls.key) if tls is not None else None,
        log_config=None,
        log_level=log_level,
        access_log=False,
    )
    return uvicorn.Server(config)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free port), or a ServerError naming the fix."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    except socket.gaierror as e:
        raise ServerError(f"--host {host}: not an address of this machine ({e.strerror}); e.g. 127.0.0.1 or 0.0.0.0") from e
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit a small send buffer: audio a client does not read piles up in the
    # session's bounded outbox (oldest dropped, counted), not unseen in the kernel (up to 4 MB on
    # Linux: minutes of Opus). 64 KiB (doubled by Linux) still carries 48 kHz float PCM over a 300 ms RTT.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise ServerError(f"cannot listen on {host}:{port} ({e.strerror}); stop what uses it or pick another --port") from e
    sock.set_inheritable(True)
    return sock


def _check_writable(folder) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".aimsvoice-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ServerError(f"--record {folder}: cannot write there ({e.strerror}); pick a writable folder") from e
