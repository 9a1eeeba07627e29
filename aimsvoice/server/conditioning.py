"""A client's request -> the conversation it conditions: persona, voice, text prompt, sampling, seed.

A session is conditioned exactly as `talk --persona X --voice V --text-prompt T` would be
(`session.conversation_spec`), then the client's sampling values override the persona's. A
client names only voices of the model, never a path; a voice sent as audio is stored once under
the cache, named by its content, so the engine's prompt-state cache (keyed by the audio) makes
the next session with that voice skip the encoding. Blocking work (files, decoding): run it off
the event loop.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from .. import personas, xdg
from ..audio.format import SAMPLE_RATE
from ..audio.wavio import read_wav
from ..engine.cascade.engine import ELEVENLABS_VOICE_ID
from ..engine.contract import ConversationSpec
from ..engine.prompts import normalize_loudness, voice_names
from ..errors import AimsvoiceError
from ..session import TalkSettings, conversation_spec
from .config import MAX_VOICE_AUDIO_S, MIN_VOICE_AUDIO_S
from .protocols import ProtocolError, SessionRequest

VOICES_SUBDIR = "server-voices"
SEED_BITS = 31


def conversation_for(request: SessionRequest, model_dir: Path | None) -> tuple[ConversationSpec, dict[str, Any]]:
    """The conversation a request asks for, and what to log and record about it.

    A session without a seed gets a random one, recorded, so that it can be replayed.
    Raises ProtocolError with the message for the client.
    """
    try:
        persona = personas.load(request.persona)
    except AimsvoiceError as e:
        raise ProtocolError(str(e)) from None
    voice = None
    if model_dir is None:  # the cascade: a voice is an ElevenLabs voice id, by default the persona's
        voice = cascade_voice(request, persona.cascade.get("voice_id"))
    elif request.voice is not None:
        voice = model_voice(request.voice, model_dir)
    elif request.voice_audio is not None:
        voice = str(store_voice_audio(request.voice_audio))
    seed = request.seed if request.seed is not None else secrets.randbits(SEED_BITS)
    spec = conversation_spec(TalkSettings(voice=voice, text_prompt=request.text_prompt, seed=seed), persona)
    spec = replace(spec, sampling=replace(spec.sampling, **request.sampling_overrides()))
    info = {
        "persona": persona.name,
        "voice": Path(spec.voice).name if request.voice_audio is not None else spec.voice,
        "voice_from_client_audio": request.voice_audio is not None,
        "text_prompt": spec.text_prompt,
        "sampling": asdict(spec.sampling),
        "seed": spec.seed,
    }
    return spec, info


def cascade_voice(request: SessionRequest, persona_voice: str | None) -> str | None:
    """The cascade's voice for a session: voice_prompt as an ElevenLabs voice id, else the persona's."""
    if request.voice_audio is not None:
        raise ProtocolError("voice_audio needs PersonaPlex; this server runs the cascade: send an ElevenLabs voice id as voice_prompt")
    if request.voice is None:
        return persona_voice
    if not ELEVENLABS_VOICE_ID.fullmatch(request.voice):
        raise ProtocolError(f"voice_prompt {request.voice!r}: this server runs the cascade; send an ElevenLabs voice id (20 letters and digits)")
    return request.voice


def model_voice(name: str, model_dir: Path) -> str:
    """A voice of the model by name, any case, as the model spells it."""
    names = voice_names(model_dir)
    by_case = {n.lower(): n for n in names}
    found = by_case.get(name.lower())
    if found is None:
        choices = ", ".join(names) or "none"
        raise ProtocolError(f"voice_prompt {name!r} is not a voice of this model; choose one of: {choices}")
    return found


def store_voice_audio(data: bytes) -> Path:
    """Keep a voice sent as audio under the cache, named by its content; check it is 1 to 30 s of sound."""
    folder = xdg.cache_dir() / VOICES_SUBDIR
    path = folder / f"{hashlib.sha256(data).hexdigest()[:24]}.wav"
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp.wav")
    tmp.write_bytes(data)
    try:
        try:
            pcm = read_wav(tmp)
        except AimsvoiceError:
            raise ProtocolError("voice_audio is not a readable audio file; send a WAV file in base64") from None
        seconds = len(pcm) / SAMPLE_RATE
        if seconds > MAX_VOICE_AUDIO_S:
            raise ProtocolError(f"voice_audio is {seconds:.1f} s long; send at most {MAX_VOICE_AUDIO_S:g} s")
        if seconds < MIN_VOICE_AUDIO_S:
            raise ProtocolError(f"voice_audio is {seconds:.2f} s long; send at least {MIN_VOICE_AUDIO_S:g} s of the voice")
        try:
            normalize_loudness(pcm)
        except AimsvoiceError as e:
            raise ProtocolError(f"voice_audio: {e}") from None
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
