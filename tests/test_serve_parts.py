"""The server's pure parts: both protocols' parsing and codecs, governance and pacing on a fake clock,
the session queues, access rules and TLS files. No sockets, no threads, no model."""

from __future__ import annotations

import base64
import io
import json
import wave
from pathlib import Path

import numpy as np
import pytest

from aimsvoice.audio import FRAME_SIZE, SAMPLE_RATE
from aimsvoice.errors import ServerError
from aimsvoice.server.access import Access, access_for, read_token
from aimsvoice.server.conditioning import conversation_for, model_voice, store_voice_audio
from aimsvoice.server.config import ServerConfig
from aimsvoice.server.governance import DEFAULT_RETRY_S, Admission, SessionClock, WarmTimer
from aimsvoice.server.pacing import TickPacer
from aimsvoice.server.protocols import (
    CLOSE_TOO_BIG, CLOSE_UNSUPPORTED, OPUS, PCM_F32LE, PCM_S16LE, AudioFormat, OpusDecoder, OpusEncoder, PcmDecoder,
    PcmEncoder, ProtocolError, close_reason, parse_chat_query, parse_persona_config, split_kind, voice_name,
)
from aimsvoice.server.sessions import AudioOut, Ended, Inbound, Outbox, Ready, TextOut
from aimsvoice.server.tls import resolve_tls

# -- requests ---------------------------------------------------------------------------------


def test_the_reference_query_maps_onto_a_request_and_its_extra_parameters_are_ignored() -> None:
    request = parse_chat_query({
        "voice_prompt": "NATF0.pt", "text_prompt": "You enjoy having a good conversation.", "seed": "42",
        "text_temperature": "0.6", "text_topk": "30", "audio_temperature": "0", "audio_topk": "200",
        "pad_mult": "0", "repetition_penalty": "1.0", "token": "secret",
    })
    assert request.voice == "NATF0" and request.text_prompt.startswith("You enjoy") and request.seed == 42
    assert request.sampling_overrides() == {"temp_text": 0.6, "topk_text": 30, "temp_audio": 0.0, "topk_audio": 200}
    assert parse_chat_query({}) == type(request)()  # moshi's own client sends nothing: the default persona


@pytest.mark.parametrize(("params", "needle"), [
    ({"text_temperature": "hot"}, "text_temperature: give a number from 0 to 10"),
    ({"audio_temperature": "11"}, "audio_temperature"),
    ({"text_topk": "0"}, "text_topk: give a whole number from 1"),
    ({"audio_topk": "2.5"}, "audio_topk"),
    ({"seed": "-1"}, "seed"),
    ({"voice_prompt": "../../etc/passwd"}, "name of a voice"),
    ({"voice_prompt": "/models/voices/NATF0.pt"}, "name of a voice"),
    ({"voice_prompt": "https://cdn.example.com/voice.wav"}, "never fetches a URL"),
    ({"text_prompt": "x" * 5000}, "at most 4000"),
])
def test_bad_query_parameters_are_named_with_the_fix(params, needle) -> None:
    with pytest.raises(ProtocolError, match=needle.replace("(", r"\(")):
        parse_chat_query(params)


def test_persona_config_carries_the_persona_overrides_and_the_audio_format() -> None:
    request, fmt = parse_persona_config(json.dumps({
        "type": "persona_config", "persona": "headcoach", "voice_prompt": "varm2", "text_prompt": "Be brief.",
        "audio": "pcm_f32le", "sample_rate": 48000, "seed": 3, "text_temperature": 0,
    }))
    assert (request.persona, request.voice, request.text_prompt, request.seed) == ("headcoach", "varm2", "Be brief.", 3)
    assert request.sampling_overrides() == {"temp_text": 0.0}
    assert fmt == AudioFormat(PCM_F32LE, 48000)
    assert parse_persona_config('{"type": "persona_config"}')[1] == AudioFormat(PCM_S16LE, SAMPLE_RATE)
    assert parse_persona_config('{"type": "persona_config", "audio": "opus", "sample_rate": 48000}')[1] == AudioFormat(OPUS, SAMPLE_RATE)


@pytest.mark.parametrize(("text", "needle"), [
    ("not json", "not JSON"),
    ('["persona_config"]', 'must be {"type": "persona_config"'),
    ('{"type": "hello"}', 'must be {"type": "persona_config"'),
    ('{"type": "persona_config", "voice": "NATF0"}', "unknown field 'voice'"),
    ('{"type": "persona_config", "audio": "mp3"}', "not one of pcm_s16le, pcm_f32le, opus"),
    ('{"type": "persona_config", "sample_rate": 1000}', "outside 8000-192000"),
    ('{"type": "persona_config", "sample_rate": "16k"}', "whole number"),
    ('{"type": "persona_config", "audio": "opus", "sample_rate": 44100}', "opus runs at"),
    ('{"type": "persona_config", "text_topk": "25"}', "text_topk"),  # JSON numbers are numbers
    ('{"type": "persona_config", "voice_prompt": "https://x.example/v.wav"}', "never fetches a URL"),
    ('{"type": "persona_config", "voice_audio": "https://x.example/v.wav"}', "never fetches a URL"),
    ('{"type": "persona_config", "voice_audio": "%%%"}', "not valid base64"),
    ('{"type": "persona_config", "voice_audio": "UklG", "voice_prompt": "NATF0"}', "not both"),
])
def test_bad_persona_configs_are_named_with_the_fix(text, needle) -> None:
    with pytest.raises(ProtocolError, match=needle.replace("(", r"\(").replace("{", r"\{").replace("[", r"\[")):
        parse_persona_config(text)


def test_voice_names_take_a_suffix_and_never_a_path() -> None:
    assert voice_name("NATF0.pt") == "NATF0" and voice_name("varf1.wav") == "varf1" and voice_name("VARM2") == "VARM2"
    for bad in ("a/b", "..", "C:\\voices\\x", "", "x" * 65):
        with pytest.raises(ProtocolError):
            voice_name(bad)


def test_conversation_for_conditions_as_talk_and_client_sampling_wins(tiny_dir: Path) -> None:
    request = parse_chat_query({"voice_prompt": "natm1.pt", "text_temperature": "0", "audio_topk": "50", "seed": "5"})
    spec, info = conversation_for(request, tiny_dir)
    assert spec.voice == "NATM1" and spec.seed == 5  # the model's spelling
    assert spec.sampling.temp_text == 0.0 and spec.sampling.topk_audio == 50 and spec.sampling.temp_audio == 0.8
    assert info["persona"] == "assistant" and info["seed"] == 5
    spec, info = conversation_for(parse_chat_query({"persona": "HeadCoach"}), tiny_dir)
    assert info["persona"] == "headcoach" and spec.voice == "VARM2" and isinstance(spec.seed, int)  # a seed is always recorded
    with pytest.raises(ProtocolError, match="not a voice of this model; choose one of: NATF0"):
        model_voice("NOPE", tiny_dir)
    with pytest.raises(ProtocolError, match="unknown persona 'nobody'"):
        conversation_for(parse_chat_query({"persona": "nobody"}), tiny_dir)


def _wav_bytes(seconds: float, level: float = 0.2, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    pcm = (level * np.sin(2 * np.pi * 180 * t) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return buffer.getvalue()


def test_a_voice_sent_as_audio_is_stored_once_by_content_and_checked(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    data = _wav_bytes(2.0)
    path = store_voice_audio(data)
    assert path.is_file() and path.parent == tmp_path / "aimsvoice" / "server-voices"
    assert store_voice_audio(data) == path
    request, _ = parse_persona_config(json.dumps({"type": "persona_config", "voice_audio": base64.b64encode(data).decode()}))
    assert request.voice_audio == data
    for bad, needle in ((_wav_bytes(31.0), "at most 30 s"), (_wav_bytes(0.5), "at least 1 s"),
                        (b"RIFF....not a wav", "not a readable audio file"), (_wav_bytes(2.0, level=0.0), "silent")):
        with pytest.raises(ProtocolError, match=needle):
            store_voice_audio(bad)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # nothing left of the refused ones


# -- messages and codecs ----------------------------------------------------------------------


def test_kinds_and_close_reasons() -> None:
    assert split_kind(b"\x01abc") == (1, b"abc")
    with pytest.raises(ProtocolError, match="empty message"):
        split_kind(b"")
    long = "é" * 100
    assert len(close_reason(long).encode()) <= 123 and close_reason("idle-timeout") == "idle-timeout"


def test_pcm_passes_through_at_24k_bit_exact_and_across_message_boundaries() -> None:
    values = np.arange(-3000, 3000, dtype="<i2")
    data = values.tobytes()
    decoder = PcmDecoder(AudioFormat(PCM_S16LE, SAMPLE_RATE))
    pieces = [decoder.decode(data[i : i + 333]) for i in range(0, len(data), 333)]  # odd sizes: samples split
    pcm = np.concatenate(pieces)
    assert np.array_equal(pcm, values.astype(np.float32) / np.float32(32768))
    assert PcmEncoder(AudioFormat(PCM_S16LE, SAMPLE_RATE)).encode(pcm) == data
    f32 = PcmDecoder(AudioFormat(PCM_F32LE, SAMPLE_RATE)).decode(np.array([0.5, np.nan, 7.0], dtype="<f4").tobytes())
    assert f32.tolist() == [0.5, 0.0, 1.0]


@pytest.mark.parametrize("rate", [16_000, 44_100, 48_000])
def test_pcm_at_other_rates_is_resampled_both_ways_keeping_duration(rate: int) -> None:
    fmt = AudioFormat(PCM_F32LE, rate)
    t = np.arange(rate) / rate
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype("<f4")
    decoder = PcmDecoder(fmt)
    model_side = np.concatenate([decoder.decode(tone[i : i + 777].tobytes()) for i in range(0, len(tone), 777)])
    assert 0 <= SAMPLE_RATE - len(model_side) <= SAMPLE_RATE // 20  # a streaming resampler holds back tens of ms
    encoder = PcmEncoder(fmt)
    out = np.concatenate([np.frombuffer(encoder.encode(model_side[i : i + FRAME_SIZE]), "<f4") for i in range(0, len(model_side), FRAME_SIZE)])
    assert 0 <= rate - len(out) <= rate // 10  # both resamplers' hold-back, not a loss
    mid = out[len(out) // 4 : 3 * len(out) // 4]
    assert 0.25 < np.sqrt(2 * np.mean(mid**2)) < 0.35  # the tone's amplitude survives


def test_opus_streams_decode_in_any_chunking_and_garbage_is_refused() -> None:
    encoder, decoder = OpusEncoder(), OpusDecoder()
    t = np.arange(10 * FRAME_SIZE) / SAMPLE_RATE
    pcm = (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    stream = b"".join(encoder.encode(pcm[i : i + FRAME_SIZE]) for i in range(0, len(pcm), FRAME_SIZE))
    decoded = np.concatenate([decoder.decode(stream[i : i + 101]) for i in range(0, len(stream), 101)])
    assert len(decoded) >= 8 * FRAME_SIZE and 0.15 < np.sqrt(2 * np.mean(decoded[FRAME_SIZE:] ** 2)) < 0.45
    with pytest.raises(ProtocolError) as error:
        OpusDecoder().decode(b"\x00garbage that is not an ogg stream" * 10)
    assert error.value.close_code == CLOSE_UNSUPPORTED


# -- governance -------------------------------------------------------------------------------


def test_admission_refuses_the_one_too_many_with_a_retry_estimate() -> None:
    policy = Admission(2)
    assert policy.decide(0).admit and policy.decide(1).admit
    full = policy.decide(2)
    assert not full.admit and full.retry_after_s == DEFAULT_RETRY_S and "full (2 sessions at once)" in full.reason
    assert policy.decide(2, soonest_end_s=12.2).retry_after_s == 13
    assert policy.decide(5, soonest_end_s=0.0).retry_after_s == 1
    assert "1 session at once" in Admission(1).decide(1).reason
    with pytest.raises(ValueError):
        Admission(0)


def test_a_session_ends_at_its_length_limit_or_after_the_users_silence() -> None:
    clock = SessionClock(live_since=100.0, session_s=60.0, idle_s=10.0)
    assert clock.due(105.0) is None and clock.next_due_s(105.0) == 5.0
    clock.heard(108.0, -60.0)  # line noise is not speech
    assert clock.due(110.0) == "idle-timeout"
    clock.heard(109.0, -20.0)
    assert clock.due(110.0) is None and clock.due(119.0) == "idle-timeout"
    for t in range(110, 161, 5):
        clock.heard(float(t), -20.0)
    assert clock.due(160.0) == "session-limit" and clock.remaining_s(150.0) == 10.0
    unlimited = SessionClock(0.0, None, None)
    assert unlimited.due(1e9) is None and unlimited.next_due_s(5.0) is None and unlimited.remaining_s(5.0) is None


def test_the_model_unloads_after_a_quiet_spell_and_any_session_keeps_it_warm() -> None:
    timer = WarmTimer(30.0)
    timer.sessions(0.0, 1)
    assert not timer.should_unload(100.0, warm=True) and timer.wait_s(100.0, True) is None
    timer.sessions(100.0, 0)
    assert not timer.should_unload(129.0, True) and timer.wait_s(120.0, True) == 10.0
    timer.sessions(125.0, 0)  # still none: the quiet spell started at 100
    assert timer.should_unload(130.0, True) and not timer.should_unload(130.0, warm=False)
    timer.sessions(131.0, 2)
    assert not timer.should_unload(500.0, True)
    assert not WarmTimer(None).should_unload(1e9, True)


def test_pacing_keeps_80ms_ticks_fits_prompt_ticks_in_the_slack_and_restarts_when_far_behind() -> None:
    pacer = TickPacer()
    assert not pacer.due(0.0) and pacer.prompt_fits(0.0)  # nobody talks: prompts back to back
    pacer.start(10.0)
    assert pacer.due(10.0)
    pacer.ticked(10.0, 10.02)  # 20 ms tick; next due at 10.08
    assert not pacer.due(10.05) and pacer.wait_s(10.05) == pytest.approx(0.03)
    assert pacer.prompt_fits(10.02)  # judged by the real-time tick: 10.02 + 1.5 x 0.02 + 0.002 <= 10.08
    pacer.prompt_ticked(10.02, 10.05)  # a 30 ms prompt tick
    assert not pacer.prompt_fits(10.05)  # 10.05 + 0.045 > 10.08
    pacer.ticked(10.08, 10.10)
    assert pacer.deadline == pytest.approx(10.16)  # on schedule
    pacer.ticked(10.16, 10.40)  # a 240 ms stall: far behind, the schedule restarts from now
    assert pacer.deadline == pytest.approx(10.40) and pacer.restarts == 1
    pacer.ticked(10.40, 10.47)  # a slow tick (70 ms) is caught up, not restarted
    assert pacer.deadline == pytest.approx(10.48) and pacer.restarts == 1
    pacer.stop()
    assert pacer.wait_s(11.0) is None and not pacer.due(11.0)


# -- the session queues -----------------------------------------------------------------------


def test_inbound_drops_audio_before_the_session_is_live_and_counts_late_frames_only_after_audio_came() -> None:
    inbound = Inbound(bound=4 * FRAME_SIZE)
    inbound.push(np.ones(FRAME_SIZE, dtype=np.float32))
    assert inbound.dropped_early == FRAME_SIZE and inbound.take() is None and not inbound.started
    inbound.open()
    assert inbound.take() is None and not inbound.started  # nothing came yet: not late, just silent
    frame = np.full(FRAME_SIZE, 0.25, dtype=np.float32)
    inbound.push(frame[:1000])
    assert inbound.started and inbound.take() is None  # part of a frame: the rest is late
    inbound.push(frame[1000:])
    assert np.array_equal(inbound.take(), frame) and inbound.received == FRAME_SIZE


def test_inbound_holds_a_burst_to_its_bound_at_once_and_drains_a_standing_backlog() -> None:
    shed: list[int] = []
    inbound = Inbound(bound=4 * FRAME_SIZE, on_shed=shed.append)
    inbound.open()
    rng = np.random.default_rng(0)
    inbound.push((0.1 * rng.standard_normal(30 * FRAME_SIZE)).astype(np.float32))  # 2.4 s at once
    assert inbound.backlog == inbound.capacity and sum(shed) == 30 * FRAME_SIZE - inbound.capacity
    inbound.take()
    assert inbound.backlog <= inbound.bound
    for _ in range(40):  # real time from now on: one frame in per frame out
        inbound.push((0.1 * rng.standard_normal(FRAME_SIZE)).astype(np.float32))
        assert inbound.take() is not None
    assert inbound.backlog <= 2 * FRAME_SIZE  # drained down to about the margin, one frame of jitter kept
    assert inbound.shed == sum(shed)


def test_outbox_bounds_audio_for_a_client_that_does_not_read_and_keeps_the_end() -> None:
    wakes: list[int] = []
    drops: list[int] = []
    ends: list[int] = []
    outbox = Outbox(max_audio=3, wake=lambda: wakes.append(1), on_end=lambda: ends.append(1), on_drop=lambda: drops.append(1), max_text=2)
    outbox.put(Ready())
    for i in range(10):
        outbox.put(AudioOut(np.full(4, i, dtype=np.float32)))
        outbox.put(TextOut(str(i)))
    outbox.put(Ended("idle-timeout"))
    assert len(wakes) == 1, "woken once until it reads"
    events = []
    while (event := outbox.pop()) is not None:
        events.append(event)
    assert isinstance(events[0], Ready) and isinstance(events[-1], Ended) and ends == [1]
    assert [int(e.pcm[0]) for e in events if isinstance(e, AudioOut)] == [7, 8, 9]  # the newest audio
    assert [e.text for e in events if isinstance(e, TextOut)] == ["8", "9"]
    assert outbox.audio_dropped == 7 == len(drops) and outbox.text_dropped == 8
    outbox.put(TextOut("again"))
    assert len(wakes) == 2, "an emptied outbox wakes the reader again"


# -- access and TLS ---------------------------------------------------------------------------


def test_tokens_by_header_or_query_and_origins_by_rule() -> None:
    access = Access("s3cret-token-0123456789", ("https://app.example.com/",), loopback=False)
    assert access.check({}, {}).status == 401
    assert access.check({"authorization": "Bearer nope"}, {}).status == 401
    assert access.check({"authorization": "Bearer s3cret-token-0123456789"}, {}) is None
    assert access.check({}, {"token": "s3cret-token-0123456789"}) is None
    assert access.check({}, {}, needs_token=False) is None
    good = {"authorization": "bearer s3cret-token-0123456789"}
    assert access.check({**good, "origin": "https://APP.example.com"}, {}) is None
    assert access.check({**good, "origin": "https://evil.example.com"}, {}).status == 403
    assert access.check({**good, "origin": "http://localhost:3000"}, {}).status == 403  # not on loopback
    assert access.check({**good, "origin": "https://voice.example.com:8998", "host": "voice.example.com:8998"}, {}) is None
    local = Access(None, (), loopback=True)
    assert local.check({"origin": "http://localhost:5173"}, {}) is None
    assert local.check({"origin": "http://127.0.0.1:8998"}, {}) is None
    assert local.check({"origin": "https://attacker.example"}, {}).status == 403
    assert Access(None, ("*",), loopback=False).check({"origin": "https://anything.example"}, {}) is None


def test_an_exposed_host_needs_a_token_file_of_a_real_token(tmp_path: Path) -> None:
    with pytest.raises(ServerError, match="--token-file"):
        access_for(ServerConfig(host="0.0.0.0"))
    short = tmp_path / "short"
    short.write_text("abc\n")
    with pytest.raises(ServerError, match="at least 16 characters"):
        read_token(short)
    with pytest.raises(ServerError, match="cannot read it"):
        read_token(tmp_path / "missing")
    good = tmp_path / "token"
    good.write_text("0123456789abcdef0123\n")
    assert access_for(ServerConfig(host="0.0.0.0", token_file=good)).token == "0123456789abcdef0123"


def test_tls_needs_both_files_or_makes_a_self_signed_certificate_once(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    with pytest.raises(ServerError, match="no cert.pem and no key.pem"):
        resolve_tls(str(tmp_path))
    made = resolve_tls("self-signed")
    assert made.created and made.cert.parent == tmp_path / "config" / "aimsvoice" / "tls"
    assert oct(made.key.stat().st_mode & 0o777) == "0o600"
    again = resolve_tls("self-signed")
    assert not again.created and again.fingerprint == made.fingerprint and len(made.fingerprint) == 95
    assert resolve_tls(str(made.cert.parent)).fingerprint == made.fingerprint


def test_message_limits_are_named() -> None:
    from aimsvoice.server.app import BriefWire
    from aimsvoice.server.sessions import ServerSession

    session = ServerSession("ws", Outbox(3, lambda: None), Inbound(4 * FRAME_SIZE))
    wire = BriefWire(session, AudioFormat())
    with pytest.raises(ProtocolError) as error:
        wire.receive({"bytes": bytes(300 * 1024)})
    assert error.value.close_code == CLOSE_TOO_BIG
    assert wire.receive({"text": '{"type": "end"}'}) == "client-ended"
    with pytest.raises(ProtocolError, match="unknown message type 'pause'"):
        wire.receive({"text": '{"type": "pause"}'})


def test_a_session_refused_before_its_conversation_frees_its_place_at_once() -> None:
    """A client told its request is bad (closed before any row) may come straight back: its place is free
    when the transport releases it, not at the tick thread's next turn (here never: it is not started)."""
    from aimsvoice.server.metrics import Metrics
    from aimsvoice.server.scheduler import Scheduler
    from aimsvoice.server.sessions import ServerSession

    scheduler = Scheduler(ServerConfig(model="tiny", device="cpu", max_sessions=1), Metrics(), lambda rows: None)
    first = scheduler.admit("ws", lambda: None)
    assert isinstance(first, ServerSession)
    assert not scheduler.admit("ws", lambda: None).admit  # full
    scheduler.release(first, "bad-request")
    assert first.state == "ended" and first.end_reason == "bad-request"
    again = scheduler.admit("ws", lambda: None)
    assert isinstance(again, ServerSession)
    # One whose conversation went to the tick thread is ended there, which frees its row first.
    scheduler.open(again, None, {})  # type: ignore[arg-type]
    scheduler.release(again, "client-closed")
    assert again.state == "admitted" and scheduler.health()["sessions_active"] == 1
