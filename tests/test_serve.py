"""`aimsvoice serve` end to end: a real server on a loopback port, real WebSocket clients, real Opus.

One server (the tiny model, 4 sessions, recording) serves most tests; the ones that need other
settings (one session, short limits, a token, TLS, unloading, a slow engine) start their own.
Timing is judged with margins and by counting frames, never by luck: a client that must not be
late sends ahead of time, and equivalence is judged on what the model heard, which the recording
keeps exactly.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import sphn
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from aimsvoice.audio import FRAME_SIZE, SAMPLE_RATE
from aimsvoice.engine import ConversationSpec, Engine, EngineConfig, SamplingConfig, load_model
from aimsvoice.server.config import FRAME_S
from aimsvoice.session import run_frames
from serve_helpers import (
    Heard, config_message, heard_wav, read_to_close, recv, run, running, s16, speechlike, tiny_config, until, ws_connect,
)

pytestmark = pytest.mark.realtime  # wall-clock time: run alone, never beside other tests (Makefile)

SHORT = "Hi."  # a short text prompt: the system prompt runs in about a second on the tiny model
GREEDY = {"text_temperature": 0, "audio_temperature": 0}


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("records")


@pytest.fixture(scope="module")
def server(tiny_dir: Path, records: Path):
    with running(tiny_config(record=records, idle_timeout=None)) as r:
        yield r


def recording(records: Path, session_id: str, timeout: float = 15.0) -> tuple[dict, np.ndarray]:
    """A session's recording JSON and the user's channel (int16), once written."""
    deadline = time.monotonic() + timeout
    while not (found := list(records.glob(f"*-{session_id}.json"))):
        assert time.monotonic() < deadline, f"no recording of {session_id}"
        time.sleep(0.05)
    document = json.loads(found[0].read_text())
    return document, heard_wav(found[0].with_suffix(".wav"))


async def talk_ws(url: str, frames: np.ndarray | None, *, ahead: int = 2, after_s: float = 0.3, **fields) -> Heard:
    """A /ws session: persona_config, ready, user audio in real time (`ahead` frames early), then `end`."""
    heard = Heard()
    async with ws_connect(url) as ws:
        await ws.send(config_message(**fields))
        await until(ws, heard, "ready")
        reader = asyncio.create_task(read_to_close(ws, heard, timeout=60))
        if frames is not None:
            start = asyncio.get_running_loop().time()
            for i in range(0, len(frames), FRAME_SIZE):
                due = start + (i // FRAME_SIZE - ahead) * FRAME_S
                await asyncio.sleep(max(0.0, due - asyncio.get_running_loop().time()))
                await ws.send(s16(frames[i : i + FRAME_SIZE]))
        await asyncio.sleep(after_s)
        await ws.send(json.dumps({"type": "end"}))
        await reader
    return heard


# -- the brief's protocol ---------------------------------------------------------------------


def test_three_personas_at_once_each_say_what_they_would_say_alone(server, records: Path, tiny_dir: Path) -> None:
    personas = ("headcoach", "strategist", "entertainer")
    inputs = [speechlike(30, seed) for seed in range(3)]

    async def three():
        return await asyncio.gather(*(talk_ws(server.ws + "/ws", pcm, persona=p, **GREEDY) for p, pcm in zip(personas, inputs)))

    sessions = run(three())
    model = load_model(tiny_dir, device="cpu", dtype="float32")
    conversations = []
    for persona, sent, heard in zip(personas, inputs, sessions):
        assert heard.end["reason"] == "client-ended" and heard.close_code == 1000
        document, user = recording(records, heard.of("ready")[0]["session"])
        settings = document["settings"]
        assert document["persona"] == persona and settings["sampling"]["temp_text"] == 0.0
        tokens = document["transcript"]["tokens"]
        assert len(tokens) == len(user) // FRAME_SIZE == document["stats"]["frames"] >= 30
        # What the model heard: the client's frames in order, with silence where it was late or not yet sending.
        heard_frames = user.reshape(-1, FRAME_SIZE)
        spoken = heard_frames[np.any(heard_frames != 0, axis=1)]
        if document["stats"]["input_shed_s"] == 0:
            assert np.array_equal(spoken.reshape(-1), np.frombuffer(s16(sent), "<i2"))
        # The same audio through the offline engine, alone: the same words, token for token.
        spec = ConversationSpec(settings["voice"], settings["text_prompt"], SamplingConfig(**settings["sampling"]), settings["seed"])
        with Engine(model, EngineConfig(device="cpu", dtype="float32")) as engine:
            engine.start(spec)
            alone = run_frames(engine, user.astype(np.float32) / np.float32(32768))
        assert alone.transcript.tokens == tokens, persona
        # And the client got every frame's audio (but what a lagging reader lost), as 16-bit PCM at 24 kHz.
        stats = heard.end["stats"]
        assert stats["frames"] == document["stats"]["frames"]
        assert sum(len(a) for a in heard.audio) == 2 * FRAME_SIZE * (stats["frames"] - stats["output_dropped_frames"])
        conversations.append(tuple(tokens))
    assert len(set(conversations)) == 3, "each persona has a conversation of its own"


def test_a_persona_seen_before_is_ready_without_its_prompt_and_says_what_it_would_alone(server, records: Path, tiny_dir: Path) -> None:
    """The second session with a persona starts from what the first one's system prompt left (prompt_memory.py);
    one that joins while that prompt runs waits for it, and is charged no prompt steps."""
    prompt = "You coach a team that lost its last three games."

    async def together():
        return await asyncio.gather(*(talk_ws(server.ws + "/ws", speechlike(5, seed), persona="headcoach", text_prompt=prompt, **GREEDY)
                                      for seed in (20, 22)))

    first, twin = sorted(run(together()), key=lambda heard: -heard.end["stats"]["prompt_steps"])
    pcm = speechlike(20, 21)
    second = run(talk_ws(server.ws + "/ws", pcm, persona="headcoach", text_prompt=prompt, seed=3))
    assert first.end["stats"]["prompt_steps"] > 50 and twin.end["stats"]["prompt_steps"] == 0
    assert second.end["stats"]["prompt_steps"] == 0
    document, user = recording(records, second.of("ready")[0]["session"])
    settings = document["settings"]
    assert settings["seed"] == 3 and settings["sampling"]["temp_text"] > 0  # seeded sampling, not the first's greedy
    spec = ConversationSpec(settings["voice"], settings["text_prompt"], SamplingConfig(**settings["sampling"]), settings["seed"])
    with Engine(load_model(tiny_dir, device="cpu", dtype="float32"), EngineConfig(device="cpu", dtype="float32")) as engine:
        engine.start(spec)
        alone = run_frames(engine, user.astype(np.float32) / np.float32(32768))
    assert alone.transcript.tokens == document["transcript"]["tokens"]


def test_opus_and_resampled_pcm_flow_both_ways_on_ws(server) -> None:
    async def opus_session() -> tuple[Heard, int]:
        heard = Heard()
        writer, reader = sphn.OpusStreamWriter(SAMPLE_RATE), sphn.OpusStreamReader(SAMPLE_RATE)
        pcm = speechlike(20, 7)
        async with ws_connect(server.ws + "/ws") as ws:
            await ws.send(config_message(text_prompt=SHORT, audio="opus", sample_rate=48000))
            await until(ws, heard, "ready")
            consumer = asyncio.create_task(read_to_close(ws, heard, timeout=30))
            for i in range(0, len(pcm), FRAME_SIZE):
                await ws.send(writer.append_pcm(pcm[i : i + FRAME_SIZE]))
                await asyncio.sleep(FRAME_S)
            await ws.send(json.dumps({"type": "end"}))
            await consumer
        decoded = sum(len(reader.append_bytes(page)) for page in heard.audio)
        return heard, decoded

    heard, decoded = run(opus_session())
    frames = heard.end["stats"]["frames"]
    assert frames >= 20 and heard.end["stats"]["audio_in_s"] == pytest.approx(20 * FRAME_S, abs=0.2)
    assert abs(decoded - frames * FRAME_SIZE) <= 2 * FRAME_SIZE  # Opus at 24 kHz, as long as the session
    pcm16k = run(talk_ws(server.ws + "/ws", None, after_s=1.0, text_prompt=SHORT, audio="pcm_f32le", sample_rate=16000))
    samples = sum(len(a) for a in pcm16k.audio) // 4
    frames = pcm16k.end["stats"]["frames"]
    assert frames >= 10 and abs(samples - frames * 1280) <= 1280  # 80 ms at 16 kHz per frame, less the resampler's hold-back


def test_a_voice_sent_as_audio_conditions_the_session_and_is_encoded_once(server, tmp_path: Path, monkeypatch) -> None:
    import base64
    import io
    import wave

    t = np.arange(2 * 16000) / 16000
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((0.2 * np.sin(2 * np.pi * 150 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)) * 32767).astype("<i2").tobytes())
    voice = base64.b64encode(buffer.getvalue()).decode()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # the server's thread looks there too: a cache of this test's own
    heard = run(talk_ws(server.ws + "/ws", None, text_prompt=SHORT, voice_audio=voice))
    assert heard.end["reason"] == "client-ended"
    cached = list((tmp_path / "aimsvoice" / "prompts").rglob("*.pt"))
    assert len(cached) == 1, "the voice's prompt state is cached by content"
    again = run(talk_ws(server.ws + "/ws", None, text_prompt=SHORT, voice_audio=voice))
    assert again.end["stats"]["prompt_steps"] <= heard.end["stats"]["prompt_steps"]
    assert list((tmp_path / "aimsvoice" / "prompts").rglob("*.pt")) == cached
    assert len(list((tmp_path / "aimsvoice" / "server-voices").iterdir())) == 1


def test_bad_configs_and_messages_get_a_clear_error_and_the_server_goes_on(server) -> None:
    async def first_message(message) -> Heard:
        heard = Heard()
        async with ws_connect(server.ws + "/ws") as ws:
            await ws.send(message)
            return await read_to_close(ws, heard)

    async def scenarios():
        results = {}
        for name, message in {
            "binary first": b"\x00\x01",
            "not json": "hello",
            "unknown persona": config_message(persona="nobody"),
            "unknown voice": config_message(voice_prompt="NOBODY.pt"),
            "url voice": config_message(voice_prompt="https://example.com/v.wav"),
            "bad format": config_message(audio="flac"),
            "prompt too long": config_message(text_prompt="You are a coach. " * 100),  # for the tiny model's window
        }.items():
            results[name] = await first_message(message)
        heard = Heard()  # after ready: a bad message is answered and the session goes on; too big closes it
        async with ws_connect(server.ws + "/ws") as ws:
            await ws.send(config_message(text_prompt=SHORT))
            await until(ws, heard, "ready")
            await ws.send("not json")
            await until(ws, heard, "error")
            await ws.send(json.dumps({"type": "mute"}))
            await until(ws, heard, "error")
            await ws.send(s16(speechlike(2, 3)))
            before = len(heard.audio)
            while len(heard.audio) < before + 3:
                await recv(ws, heard)  # still live
            await ws.send(bytes(300 * 1024))
            results["too big"] = await read_to_close(ws, heard)
        return results

    results = run(scenarios())
    expect = {
        "binary first": (1003, "must be text"),
        "not json": (1008, "not JSON"),
        "unknown persona": (1008, "unknown persona 'nobody'"),
        "unknown voice": (1008, "not a voice of this model"),
        "url voice": (1008, "never fetches a URL"),
        "bad format": (1008, "'flac' is not one of"),
        "prompt too long": (1008, "shorten the text prompt"),
        "too big": (1009, "send at most 262144 bytes"),
    }
    for name, (code, needle) in expect.items():
        heard = results[name]
        errors = [e["message"] for e in heard.of("error")]
        assert heard.close_code == code and any(needle in m for m in errors), (name, heard.close_code, errors)
    assert [e["message"][:20] for e in results["too big"].of("error")][:2] == ["a text message that ", "unknown message type"]
    wait_for(lambda: server.health()["sessions_active"] == 0)


# -- the reference protocol -------------------------------------------------------------------


async def chat(url: str, seconds: float, *, before_handshake: bool = False) -> tuple[list[int], int, list[str]]:
    """A reference client: optional early audio (as moshi's client sends), 0x00, Opus both ways. Returns
    the kinds received in order, the decoded samples, the text pieces."""
    writer, reader = sphn.OpusStreamWriter(SAMPLE_RATE), sphn.OpusStreamReader(SAMPLE_RATE)
    pcm = speechlike(int(seconds / FRAME_S), 11)
    kinds: list[int] = []
    texts: list[str] = []
    decoded = 0
    async with ws_connect(url) as ws:
        frames = iter(range(0, len(pcm), FRAME_SIZE))
        if before_handshake:
            for _ in range(5):
                i = next(frames)
                await ws.send(b"\x01" + writer.append_pcm(pcm[i : i + FRAME_SIZE]))
        while not kinds or kinds[-1] != 0:
            kinds.append((await asyncio.wait_for(ws.recv(), 30))[0])
        for i in frames:
            await ws.send(b"\x01" + writer.append_pcm(pcm[i : i + FRAME_SIZE]))
            await asyncio.sleep(FRAME_S)
            while True:
                try:
                    message = await asyncio.wait_for(ws.recv(), 0.001)
                except asyncio.TimeoutError:
                    break
                kinds.append(message[0])
                if message[0] == 1:
                    decoded += len(reader.append_bytes(message[1:]))
                elif message[0] == 2:
                    texts.append(message[1:].decode())
    return kinds, decoded, texts


def test_the_reference_protocol_with_a_persona_and_with_no_parameters_at_all(server, records: Path) -> None:
    query = "voice_prompt=NATM1.pt&text_prompt=You%20enjoy%20a%20good%20chat.&seed=7&text_topk=30&audio_temperature=0.9&pad_mult=0"
    kinds, decoded, _ = run(chat(f"{server.ws}/api/chat?{query}", 2.0))
    assert kinds[0] == 0 and kinds.count(0) == 1 and set(kinds) <= {0, 1, 2}
    assert decoded >= 15 * FRAME_SIZE  # about as long as the audio sent (the last pages still on their way)
    moshi_like = run(chat(f"{server.ws}/api/chat", 1.0, before_handshake=True))
    assert moshi_like[0][0] == 0 and moshi_like[1] > 0

    def chats() -> list[dict]:
        documents = [json.loads(p.read_text()) for p in records.glob("*.json")]
        return [d for d in documents if d["protocol"] == "chat"]

    named = wait_for(lambda: next((d for d in chats() if d["settings"]["voice"] == "NATM1"), None))
    assert named["settings"]["text_prompt"] == "You enjoy a good chat." and named["settings"]["seed"] == 7
    assert named["settings"]["sampling"]["topk_text"] == 30 and named["settings"]["sampling"]["temp_audio"] == 0.9
    default = wait_for(lambda: next((d for d in chats() if d["stats"]["input_dropped_before_ready_s"] > 0), None))
    assert default["persona"] == "assistant" and default["stats"]["end_reason"] == "client-closed"  # early audio: dropped


def wait_for(probe, timeout: float = 15.0):
    """The first true value of probe(), polled; fails after the timeout."""
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return value


def metric(r, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    status, body = r.get("/metrics")
    assert status == 200
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def test_reference_clients_get_errors_as_kind_5_and_the_session_goes_on(server) -> None:
    async def session():
        async with ws_connect(f"{server.ws}/api/chat?text_prompt={SHORT}") as ws:
            while (await asyncio.wait_for(ws.recv(), 30))[0] != 0:
                pass
            replies = []
            for message in (b"\x07abc", "text", b""):
                await ws.send(message)
                while (reply := await asyncio.wait_for(ws.recv(), 10))[0] != 5:
                    pass
                replies.append(reply[1:].decode())
            await ws.send(b"\x01" + b"not an ogg stream at all" * 20)
            while True:
                try:
                    reply = await asyncio.wait_for(ws.recv(), 10)
                except Exception as e:
                    return replies, reply[1:].decode(), e.rcvd.code
    replies, last_error, code = run(session())
    assert "unknown message kind 0x07" in replies[0] and "binary messages" in replies[1] and "empty message" in replies[2]
    assert "not an Ogg Opus stream" in last_error and code == 1003
    bad = run(_closed_with(f"{server.ws}/api/chat?text_temperature=warm"))
    assert bad[0] == 1008 and "text_temperature" in bad[1]


async def _closed_with(url: str) -> tuple[int, str]:
    async with ws_connect(url) as ws:
        try:
            while True:
                last = await asyncio.wait_for(ws.recv(), 10)
        except Exception as e:
            return e.rcvd.code, last[1:].decode()


# -- several sessions, clients that misbehave -------------------------------------------------


def test_a_client_that_vanishes_frees_its_row_and_the_others_go_on(server) -> None:
    async def steady(heard: Heard, stop: asyncio.Event) -> list[float]:
        times = []
        async with ws_connect(server.ws + "/ws") as ws:
            await ws.send(config_message(text_prompt=SHORT))
            await until(ws, heard, "ready")
            while not stop.is_set():
                message = await recv(ws, heard)
                if isinstance(message, bytes):
                    times.append(asyncio.get_running_loop().time())
        return times

    async def vanishing():
        heard = Heard()
        ws = await ws_connect(server.ws + "/ws")
        await ws.send(config_message(text_prompt=SHORT))
        await until(ws, heard, "ready")
        await ws.send(s16(speechlike(3, 5)))
        await asyncio.sleep(0.5)
        ws.transport.abort()  # gone without a close frame

    async def both():
        stop = asyncio.Event()
        heard = Heard()
        steady_task = asyncio.create_task(steady(heard, stop))
        while not heard.of("ready"):
            await asyncio.sleep(0.05)
        for _ in range(100):  # the sessions of earlier tests are all gone
            if server.health()["sessions_active"] == 1:
                break
            await asyncio.sleep(0.05)
        await vanishing()
        for _ in range(100):
            if server.health()["sessions_active"] == 1:
                break
            await asyncio.sleep(0.05)
        active_after = server.health()["sessions_active"]
        await asyncio.sleep(1.0)
        stop.set()
        return await steady_task, active_after

    times, active_after = run(both())
    assert active_after == 1, "the vanished client's row is freed"
    gaps = np.diff(times)
    assert len(times) > 20 and gaps.max() < 0.5, "the other session's audio kept coming"
    assert 0.07 <= gaps.mean() <= 0.095, "at 12.5 frames a second, while another session joined and left"


def test_a_late_client_hears_silence_and_a_client_that_does_not_read_loses_its_oldest_audio(server) -> None:
    late = run(_gap_session(server.ws + "/ws"))
    stats = late.end["stats"]
    assert stats["late_frames"] >= 8, stats  # ~1 s without audio: silence, counted
    assert stats["frames"] >= 25 and stats["input_shed_s"] < 0.5

    async def not_reading():
        heard = Heard()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        async with connect(server.ws + "/ws", sock=sock, max_queue=1, open_timeout=20, close_timeout=5) as ws:
            await ws.send(config_message(text_prompt=SHORT, audio="pcm_f32le", sample_rate=48000))
            await until(ws, heard, "ready")
            await asyncio.sleep(4.0)  # not reading
            session = server.scheduler.session(heard.of("ready")[0]["session"])
            queued, dropped = session.outbox.audio_queued, session.outbox.audio_dropped
            count = len(heard.audio)
            while len(heard.audio) < count + 20:
                await recv(ws, heard)  # it reads again: audio flows
            await ws.send(json.dumps({"type": "end"}))
            await read_to_close(ws, heard)
        return heard, queued, dropped

    heard, queued, dropped = run(not_reading())
    assert queued <= 8 and dropped >= 5, (queued, dropped)
    assert heard.end["stats"]["output_dropped_frames"] >= dropped
    assert metric(server, "aimsvoice_frames_dropped_total", kind="output") >= dropped


async def _gap_session(url: str) -> Heard:
    heard = Heard()
    pcm = speechlike(20, 9)
    async with ws_connect(url) as ws:
        await ws.send(config_message(text_prompt=SHORT))
        await until(ws, heard, "ready")
        reader = asyncio.create_task(read_to_close(ws, heard, timeout=30))
        for part in (pcm[: 10 * FRAME_SIZE], pcm[10 * FRAME_SIZE :]):
            for i in range(0, len(part), FRAME_SIZE):
                await ws.send(s16(part[i : i + FRAME_SIZE]))
                await asyncio.sleep(FRAME_S)
            await asyncio.sleep(1.0)  # the gap
        await ws.send(json.dumps({"type": "end"}))
        await reader
    return heard


def test_healthz_and_metrics(server) -> None:
    health = server.health()
    assert health["model"] == "warm" and health["sessions_max"] == 4 and health["device"] == "cpu"
    assert health["tick_ms_p50"] is None or 0 < health["tick_ms_p50"] <= health["tick_ms_p99"]
    status, body = server.get("/metrics")
    text = body.decode()
    for name in ("aimsvoice_sessions_active", "aimsvoice_sessions_started_total", "aimsvoice_sessions_rejected_total",
                 "aimsvoice_tick_seconds_bucket", "aimsvoice_audio_in_seconds_total", "aimsvoice_audio_out_seconds_total",
                 "aimsvoice_frames_dropped_total", "aimsvoice_gpu_memory_bytes"):
        assert name in text, name


# -- servers of their own ---------------------------------------------------------------------


def test_one_session_too_many_is_refused_at_once_with_a_reason(tiny_dir: Path) -> None:
    async def scenario(r):
        heard = Heard()
        async with ws_connect(r.ws + "/ws") as ws:
            await ws.send(config_message(text_prompt=SHORT))
            await until(ws, heard, "ready")
            with pytest.raises(InvalidStatus) as refused:
                async with ws_connect(r.ws + "/api/chat"):
                    pass
            full = await read_to_close(await ws_connect(r.ws + "/ws"), Heard(), timeout=5)
            return refused.value.response, full

    with running(tiny_config(max_sessions=1, session_minutes=1.0)) as r:
        response, full = run(scenario(r))
        assert response.status_code == 503 and 55 <= int(response.headers["Retry-After"]) <= 61
        assert b"full (1 session at once)" in response.body
        assert full.close_code == 1013 and "full" in full.of("error")[0]["message"]
        assert metric(r, "aimsvoice_sessions_rejected_total", reason="full") == 2


async def send_unless_closed(ws, message: bytes) -> bool:
    """Send, unless the server has closed the session meanwhile (its reader records how): False then."""
    try:
        await ws.send(message)
        return True
    except ConnectionClosed:
        return False


def test_idle_and_session_length_limits_end_sessions_cleanly(tiny_dir: Path) -> None:
    async def silent(r) -> Heard:
        heard = Heard()
        async with ws_connect(r.ws + "/ws") as ws:
            await ws.send(config_message(text_prompt=SHORT))
            await until(ws, heard, "ready")
            reader = asyncio.create_task(read_to_close(ws, heard, timeout=10))
            for _ in range(40):  # digital silence: not speech
                if reader.done() or not await send_unless_closed(ws, bytes(2 * FRAME_SIZE)):
                    break
                await asyncio.sleep(FRAME_S)
            await reader
            return heard

    async def talkative(r) -> Heard:
        heard = Heard()
        pcm = speechlike(60, 2)
        async with ws_connect(r.ws + "/ws") as ws:
            await ws.send(config_message(text_prompt=SHORT))
            await until(ws, heard, "ready")
            reader = asyncio.create_task(read_to_close(ws, heard, timeout=15))
            for i in range(0, len(pcm), FRAME_SIZE):
                if reader.done() or not await send_unless_closed(ws, s16(pcm[i : i + FRAME_SIZE])):
                    break
                await asyncio.sleep(FRAME_S)
            await reader
        return heard

    async def both(r):
        return await asyncio.gather(silent(r), talkative(r))

    with running(tiny_config(idle_timeout=1.0, session_minutes=0.04)) as r:  # 2.4 s
        idle, busy = run(both(r))
        assert idle.end["reason"] == "idle-timeout" and idle.close_code == 1000
        assert 0.95 <= idle.end["stats"]["duration_s"] <= 1.6
        assert busy.end["reason"] == "session-limit" and busy.close_code == 1000
        assert 2.3 <= busy.end["stats"]["duration_s"] <= 3.2
        wait_for(lambda: r.health()["sessions_active"] == 0)


def test_a_token_and_allowed_origins_guard_every_route_but_healthz(tiny_dir: Path, tmp_path: Path) -> None:
    token = "0123456789abcdef0123456789abcdef"
    (tmp_path / "token").write_text(token + "\n")
    config = tiny_config(token_file=tmp_path / "token", allow_origins=("https://app.example.com",), max_sessions=1)

    async def attempts(r):
        outcomes = {}
        for name, url, headers in (
            ("none", "/ws", {}),
            ("wrong", "/ws", {"Authorization": "Bearer nope"}),
            ("bad origin", f"/api/chat?token={token}", {"Origin": "https://evil.example.com"}),
        ):
            with pytest.raises(InvalidStatus) as refused:
                async with ws_connect(r.ws + url, additional_headers=headers):
                    pass
            outcomes[name] = refused.value.response.status_code
        for name, url, headers in (
            ("header", "/ws", {"Authorization": f"Bearer {token}", "Origin": "https://app.example.com"}),
            ("query", f"/ws?token={token}", {}),
        ):
            async with ws_connect(r.ws + url, additional_headers=headers) as ws:
                await ws.send(config_message(persona="nobody"))  # accepted: an answer from the app, no prompt to run
                outcomes[name] = (await read_to_close(ws, Heard(), timeout=10)).close_code
        return outcomes

    with running(config) as r:
        outcomes = run(attempts(r))
        assert outcomes == {"none": 401, "wrong": 401, "bad origin": 403, "header": 1008, "query": 1008}
        assert r.get("/healthz")[0] == 200
        assert r.get("/metrics")[0] == 401 and r.get("/metrics", {"Authorization": f"Bearer {token}"})[0] == 200


def test_tls_with_a_self_signed_certificate(tiny_dir: Path, tmp_path: Path, monkeypatch) -> None:
    from aimsvoice.server.tls import resolve_tls

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    tls = resolve_tls("self-signed")

    async def over_tls(r):
        async with ws_connect(r.ws + "/ws", tls) as ws:
            await ws.send(config_message(audio="mp3"))
            return await read_to_close(ws, Heard(), timeout=10)

    with running(tiny_config(), tls=tls) as r:
        assert r.ws.startswith("wss://") and r.health()["model"] == "warm"
        heard = run(over_tls(r))
        assert heard.close_code == 1008 and "mp3" in heard.of("error")[0]["message"]


def test_the_model_unloads_when_unused_and_the_next_session_warms_it(tiny_dir: Path) -> None:
    with running(tiny_config(unload_after=0.3)) as r:
        deadline = time.monotonic() + 10
        while r.health()["model"] != "cold":
            assert time.monotonic() < deadline, "the model stayed warm"
            time.sleep(0.05)
        heard = run(talk_ws(r.ws + "/ws", None, text_prompt=SHORT))
        kinds = [e["type"] for e in heard.events]
        assert kinds[0] == "warming" and kinds[1] == "ready" and heard.end["reason"] == "client-ended"
        assert r.health()["model"] in ("warm", "cold")
        assert metric(r, "aimsvoice_model_loads_total") == 2


class SlowEngine:
    """The tiny engine, slower than real time: each real-time tick takes at least `tick_s`."""

    def __init__(self, engine, tick_s: float) -> None:
        self.engine, self.tick_s = engine, tick_s

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def tick(self, frames):
        started = time.monotonic()
        outs = self.engine.tick(frames)
        if frames:
            time.sleep(max(0.0, self.tick_s - (time.monotonic() - started)))
        return outs


def test_slower_than_real_time_sheds_input_and_latency_stays_bounded(tiny_dir: Path) -> None:
    from aimsvoice.server.scheduler import pytorch_engine_factory

    config = tiny_config()
    real = pytorch_engine_factory(config, tiny_dir)

    async def stream(r) -> tuple[Heard, int]:
        heard = Heard()
        pcm = speechlike(50, 4)
        async with ws_connect(r.ws + "/ws") as ws:
            await ws.send(config_message(text_prompt=SHORT))
            await until(ws, heard, "ready")
            session = r.scheduler.session(heard.of("ready")[0]["session"])
            reader = asyncio.create_task(read_to_close(ws, heard, timeout=30))
            start = asyncio.get_running_loop().time()
            backlog = 0
            for i in range(0, len(pcm), FRAME_SIZE):  # real time, 4 s
                await asyncio.sleep(max(0.0, start + (i // FRAME_SIZE) * FRAME_S - asyncio.get_running_loop().time()))
                await ws.send(s16(pcm[i : i + FRAME_SIZE]))
                backlog = max(backlog, session.inbound.backlog)
            await ws.send(json.dumps({"type": "end"}))
            await reader
        return heard, backlog

    with running(config, engine_factory=lambda rows: SlowEngine(real(rows), 0.12)) as r:
        heard, backlog = run(stream(r))
        stats = heard.end["stats"]
        assert backlog <= 6 * FRAME_SIZE, "the input backlog stays under its bound (plus one message)"
        assert stats["input_shed_s"] >= 0.5, stats  # 4 s at 2/3 speed: about a third of it shed (~1 s)
        assert stats["frames"] <= 40  # ~8 ticks a second, not 12.5
        assert metric(r, "aimsvoice_tick_schedule_restarts_total") >= 1


class BrokenOnce:
    """The tiny engine, whose next real-time tick fails once `broken` is set (a device error, say)."""

    broken = False

    def __init__(self, engine) -> None:
        self.engine = engine

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def tick(self, frames):
        if frames and BrokenOnce.broken:
            BrokenOnce.broken = False
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return self.engine.tick(frames)


def test_an_engine_failure_ends_its_sessions_with_a_reason_and_the_next_one_reloads(tiny_dir: Path) -> None:
    from aimsvoice.server.scheduler import pytorch_engine_factory

    config = tiny_config()
    real = pytorch_engine_factory(config, tiny_dir)

    async def failing(r) -> Heard:
        heard = Heard()
        async with ws_connect(r.ws + "/ws") as ws:
            await ws.send(config_message(text_prompt=SHORT))
            await until(ws, heard, "ready")
            BrokenOnce.broken = True
            return await read_to_close(ws, heard, timeout=10)

    with running(config, engine_factory=lambda rows: BrokenOnce(real(rows))) as r:
        heard = run(failing(r))
        assert heard.close_code == 1011 and heard.end["reason"] == "error"
        assert "engine failed" in heard.of("error")[0]["message"]
        after = run(talk_ws(r.ws + "/ws", None, text_prompt=SHORT))
        assert after.of("warming") and after.end["reason"] == "client-ended"
        assert metric(r, "aimsvoice_model_loads_total") == 2


def test_serve_refuses_an_exposed_host_without_a_token(capsys, monkeypatch) -> None:
    from cli_run import run_main

    code, _, err = run_main(["serve", "--model", "tiny", "--host", "0.0.0.0"], capsys, monkeypatch)
    assert code == 1 and "--token-file" in err and err.count("\n") == 1
