"""The cascade's network side: one asyncio loop on its own thread, a turn as a task on it.

A turn (`Job`: the user's audio and the conversation so far) runs speech-to-text, then the
reply and the speech side by side: the reply streams in, each sentence is queued for speech as
soon as it is complete, and the speech task turns sentences into audio one after the other
while the model writes on. Everything the turn learns is reported as an `Event` (stamped with
the monotonic clock) through the `emit` callback, which hands it to the engine's step thread;
nothing here touches the engine's state. Cancelling the job's future (a barge-in) cancels the
task and with it every request in flight.

Each part goes through its providers in the order `Failover` gives (failover.py): a failover
kind of failure marks the provider down and the same work goes to the next one, without
repeating audio already delivered (a sentence cut mid-way is finished by the next voice from the
first word not yet begun). A probe task tries the providers that are down in the background.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ...audio.format import SAMPLE_RATE
from ...errors import AimsvoiceError
from .cloud import ChatCompletions, ElevenLabsSpeech, GroqWhisper, openai_base
from .config import GROQ_KEY_VAR, LLM_MODEL, CascadeConfig
from .failover import Failover, FailoverConfig
from .local import OfflineResponder, PocketSphinx, local_speech
from .providers import ChatModel, Http, ProviderFailure, SpeechToText, TextToSpeech
from .text import SentenceSplitter, heard_fraction, unheard_words
from .usage import Usage

PROBE_PERIOD_S = 0.5  # how often the probe task looks for probes due
SPEECH_AHEAD_S = 2.0  # a sentence goes to speech once the audio delivered but not yet played is shorter than this
LOCAL_LLM_WAIT_S = 0.5  # a local server at Ollama's address must answer within this to be used
COMPONENT_NAMES = {"stt": "speech-to-text", "llm": "the reply", "tts": "speech"}


# -- events: what a turn reports to the step thread ----------------------------------------------


@dataclass(frozen=True)
class Event:
    job: int | None  # the turn it belongs to; None: the session (a provider back up)
    at: float  # time.monotonic() when it happened


@dataclass(frozen=True)
class Heard(Event):
    text: str
    provider: str


@dataclass(frozen=True)
class Sentence(Event):
    index: int
    text: str
    provider: str  # the model that wrote it


@dataclass(frozen=True)
class Audio(Event):
    index: int  # the sentence
    pcm: np.ndarray  # float32 at 24 kHz
    provider: str


@dataclass(frozen=True)
class SentenceDone(Event):
    index: int


@dataclass(frozen=True)
class Replied(Event):
    provider: str


@dataclass(frozen=True)
class Notice(Event):
    text: str


@dataclass(frozen=True)
class Finished(Event):
    pass


@dataclass(frozen=True)
class Failed(Event):
    error: BaseException


@dataclass(frozen=True)
class Job:
    """One turn: its id, the user's audio (float32, 16 kHz) and the messages so far (system prompt first)."""

    id: int
    audio_16k: np.ndarray
    messages: list[dict[str, str]]


@dataclass
class Providers:
    """Each part's providers, in order of preference; the last of each is local."""

    stt: list[SpeechToText] = field(default_factory=list)
    llm: list[ChatModel] = field(default_factory=list)
    tts: list[TextToSpeech] = field(default_factory=list)

    def chains(self) -> dict[str, tuple[str, ...]]:
        return {part: tuple(p.name for p in getattr(self, part)) for part in ("stt", "llm", "tts")}

    def named(self, part: str, name: str) -> Any:
        return next(p for p in getattr(self, part) if p.name == name)

    def describe(self) -> dict[str, list[str]]:
        return {part: [_label(p) for p in getattr(self, part)] for part in ("stt", "llm", "tts")}


def _label(provider: Any) -> str:
    model = getattr(provider, "model", None) or getattr(provider, "voice", None)
    return f"{provider.name} ({model})" if model else provider.name


async def build_providers(config: CascadeConfig, http: Http) -> Providers:
    """The chains for the config's tier: cloud first for the cascade, then the local tier's."""
    local_llm = await _local_llm(config, http)
    speech = local_speech(config.local_voice)
    if config.tier == "local":
        return Providers([PocketSphinx()], [*local_llm, OfflineResponder()], [speech])
    keys = config.keys
    assert keys.groq and keys.elevenlabs, "the cascade's keys are checked before it starts"
    if config.llm_url:
        chat: list[ChatModel] = []  # --llm-url is the model; _local_llm found it
    else:
        chat = [ChatCompletions(http, "groq", f"{config.groq_url}/openai/v1", config.llm_model or LLM_MODEL, keys.groq,
                                GROQ_KEY_VAR, cloud=True)]
    return Providers(
        [GroqWhisper(http, config.groq_url, keys.groq, config.stt_model, config.timeouts.stt_s), PocketSphinx()],
        [*chat, *local_llm, OfflineResponder()],
        [ElevenLabsSpeech(http, config.elevenlabs_url, keys.elevenlabs, config.voice_id, config.tts_model), speech],
    )


async def _local_llm(config: CascadeConfig, http: Http) -> list[ChatModel]:
    """The OpenAI-compatible server of --llm-url, or one answering at Ollama's address (within half a second)."""
    if config.llm_url:
        base = openai_base(config.llm_url)
        model = config.llm_model or await _first_model(http, base, wait_s=config.timeouts.first_byte_s)
        if model is None:
            raise AimsvoiceError(f"--llm-url {config.llm_url}: no model listed at {base}/models; give --llm-model NAME")
        return [ChatCompletions(http, "llm-server", base, model, None, None, cloud=False)]
    if not config.probe_local_llm:
        return []
    base = openai_base(config.local_llm_url)
    model = await _first_model(http, base, wait_s=LOCAL_LLM_WAIT_S)
    if model is None:
        return []
    return [ChatCompletions(http, "ollama", base, config.llm_model if config.tier == "local" and config.llm_model else model,
                            None, None, cloud=False)]


async def _first_model(http: Http, base: str, wait_s: float) -> str | None:
    session = await http.session()

    async def get() -> str | None:
        async with session.get(f"{base}/models") as response:
            if response.status >= 300:
                return None
            data = await response.json(content_type=None)
            models = data.get("data") if isinstance(data, dict) else None
            return str(models[0]["id"]) if models else None

    try:
        return await asyncio.wait_for(get(), wait_s)
    except Exception:
        return None


# -- the worker ----------------------------------------------------------------------------------

ProvidersFactory = Callable[[CascadeConfig, Http], Any]  # an async function -> Providers


class Worker:
    """The loop thread, the providers, the failover state and the session's usage."""

    def __init__(
        self, config: CascadeConfig, emit: Callable[[Event], None], *, providers: ProvidersFactory = build_providers,
        failover: FailoverConfig = FailoverConfig(), clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.emit = emit
        self.clock = clock
        self.usage = Usage()
        self.http = Http(config.timeouts, config.keys)
        self._make_providers = providers
        self._failover_config = failover
        self.providers: Providers | None = None
        self.failover: Failover | None = None
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="aimsvoice-cascade", daemon=True)
        self._probe_task: concurrent.futures.Future | None = None

    def start(self) -> None:
        """Start the loop and set the providers up (a local server is looked for); idempotent."""
        if self._thread.ident is not None:
            return
        self._thread.start()
        self.providers = asyncio.run_coroutine_threadsafe(self._make_providers(self.config, self.http), self.loop).result()
        self.failover = Failover(self.providers.chains(), self._failover_config)
        warm = next((p for p in self.providers.stt if isinstance(p, PocketSphinx)), None)
        if warm is not None and self.config.tier == "local":
            warm.warm()  # the local tier's first turn should not wait for the model to load
        self._probe_task = asyncio.run_coroutine_threadsafe(self._probe_loop(), self.loop)

    def set_voice(self, voice_id: str) -> None:
        """The cloud voice of the conversation about to start (no turn is under way)."""
        for voice in self.providers.tts if self.providers is not None else ():
            if hasattr(voice, "voice_id"):
                voice.voice_id = voice_id

    def submit(self, job: Job) -> concurrent.futures.Future:
        """Run a turn; cancel the future to cancel it (a barge-in)."""
        return asyncio.run_coroutine_threadsafe(self._turn(job), self.loop)

    def close(self) -> None:
        if self._thread.ident is None:
            self.loop.close()
            return
        if self._probe_task is not None:
            self._probe_task.cancel()

        async def shutdown() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.http.close()

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(timeout=5.0)
        except Exception:
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5.0)
        if not self._thread.is_alive():
            self.loop.close()

    # -- a turn (on the loop) ----------------------------------------------------------------

    def _event(self, cls: type, job: Job | None, **fields: Any) -> None:
        self.emit(cls(job.id if job is not None else None, self.clock(), **fields))

    async def _turn(self, job: Job) -> None:
        try:
            text = await self._transcribe(job)
            if not text:
                self._event(Finished, job)
                return
            messages = [*job.messages, {"role": "user", "content": text}]
            sentences: asyncio.Queue[tuple[int, str] | None] = asyncio.Queue()
            speaker = asyncio.create_task(self._speak(job, sentences))
            try:
                await self._reply(job, messages, sentences)
            except BaseException:
                speaker.cancel()
                raise
            finally:
                sentences.put_nowait(None)
            await speaker
            self._event(Finished, job)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a rejected key, a refused request, a broken local tier: the engine raises it
            self._event(Failed, job, error=e)

    async def _transcribe(self, job: Job) -> str:
        assert self.providers is not None and self.failover is not None
        for name in self.failover.order("stt"):
            provider = self.providers.named("stt", name)
            try:
                text = await provider.transcribe(job.audio_16k)
            except ProviderFailure as e:
                self._failed("stt", name, e, job)
                continue
            if provider.cloud:
                self.usage.stt(len(job.audio_16k) / 16_000)
            self.usage.served("stt", name)
            self._event(Heard, job, text=text, provider=name)
            return text.strip()
        raise AssertionError("the last provider of a chain either answers or raises")

    async def _reply(self, job: Job, messages: list[dict[str, str]], sentences: asyncio.Queue) -> None:
        assert self.providers is not None and self.failover is not None
        n_sentences = 0
        for name in self.failover.order("llm"):
            model = self.providers.named("llm", name)
            splitter = SentenceSplitter()
            try:
                async for piece in model.reply(messages):
                    for sentence in splitter.feed(piece):
                        n_sentences = self._sentence(job, sentences, n_sentences, sentence, name)
                for sentence in splitter.flush():
                    n_sentences = self._sentence(job, sentences, n_sentences, sentence, name)
            except ProviderFailure as e:
                self._failed("llm", name, e, job)
                if n_sentences:  # part of the reply is on its way to the user: it stands, cut short
                    self._event(Notice, job, text=f"the reply broke off after {n_sentences} sentence(s)")
                    self._event(Replied, job, provider=name)
                    return
                continue
            if model.cloud:
                self.usage.llm(*model.last_usage)
            self.usage.served("llm", name)
            self._event(Replied, job, provider=name)
            return

    def _sentence(self, job: Job, sentences: asyncio.Queue, index: int, text: str, provider: str) -> int:
        self._event(Sentence, job, index=index, text=text, provider=provider)
        sentences.put_nowait((index, text))
        return index + 1

    async def _speak(self, job: Job, sentences: asyncio.Queue) -> None:
        """Each sentence to speech in turn, at most SPEECH_AHEAD_S of audio ahead of its playing (by the
        clock since the first audio came): a barge-in then leaves few characters paid for and unheard."""
        assert self.providers is not None and self.failover is not None
        delivered_s, first_at = 0.0, None
        while (item := await sentences.get()) is not None:
            index, text = item
            if first_at is not None:
                ahead_s = delivered_s - (self.clock() - first_at)
                if ahead_s > SPEECH_AHEAD_S:
                    await asyncio.sleep(ahead_s - SPEECH_AHEAD_S)
            for name in self.failover.order("tts"):
                voice = self.providers.named("tts", name)
                samples = 0
                try:
                    async for pcm in voice.speak(text):
                        if samples == 0 and voice.cloud:
                            self.usage.tts(len(text))
                        if first_at is None:
                            first_at = self.clock()
                        samples += len(pcm)
                        delivered_s += len(pcm) / SAMPLE_RATE
                        self._event(Audio, job, index=index, pcm=pcm, provider=name)
                except ProviderFailure as e:
                    self._failed("tts", name, e, job)
                    if samples:  # the rest of the sentence, from the first word not yet begun
                        text = unheard_words(text, heard_fraction(text, samples / SAMPLE_RATE, None))
                    if not text:
                        break
                    continue
                self.usage.served("tts", name)
                break
            self._event(SentenceDone, job, index=index)

    def _failed(self, part: str, name: str, failure: ProviderFailure, job: Job | None) -> None:
        assert self.failover is not None
        was_up = self.failover.is_up(part, name)
        self.failover.failed(part, name, failure.kind, self.clock())
        chain = self.failover.order(part)
        if name == self.failover.chains[part][-1]:
            raise AimsvoiceError(f"{COMPONENT_NAMES[part]} failed on {name}, the last provider: {failure.detail}")
        if was_up:
            after = chain[0] if chain else "-"
            self._event(
                Notice, job,
                text=f"{name} ({COMPONENT_NAMES[part]}) failed ({failure.kind}: {failure.detail}): {after} takes over; "
                f"{name} is tried again in the background",
            )

    async def _probe_loop(self) -> None:
        assert self.providers is not None and self.failover is not None
        while True:
            await asyncio.sleep(PROBE_PERIOD_S)
            for part, name in self.failover.probes_due(self.clock()):
                provider = self.providers.named(part, name)
                probe = getattr(provider, "probe", None)
                ok = bool(probe is not None and await probe())
                self.failover.probed(part, name, ok, self.clock())
                if ok:
                    self._event(Notice, None, text=f"{name} ({COMPONENT_NAMES[part]}) is back")
