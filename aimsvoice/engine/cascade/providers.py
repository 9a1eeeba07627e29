"""What the cascade's three parts are (speech-to-text, the reply, speech) and how a request fails.

Every provider is asynchronous and runs on the engine's worker loop. A failure is a
`ProviderFailure` of a kind (failover.py): connect, timeout, server (5xx), rate-limit (429) or
cut (the stream broke mid-way) move the turn to the next provider; a rejected key raises
`CascadeKeyError` and a refused request `ProviderRequestError` (both one line, keys redacted).
`Http` is the one aiohttp session of a worker, with the conversation's timeouts and that mapping.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Protocol

import aiohttp
import numpy as np

from .config import CascadeKeyError, Keys, ProviderRequestError, Timeouts
from .failover import AUTH, CONNECT, CUT, RATE_LIMIT, REQUEST, SERVER, TIMEOUT


class ProviderFailure(Exception):
    """A request that failed in a way another provider (or a later try) may not: `kind` says how."""

    def __init__(self, kind: str, provider: str, detail: str) -> None:
        super().__init__(f"{provider}: {detail}")
        self.kind = kind
        self.provider = provider
        self.detail = detail


class SpeechToText(Protocol):
    name: str
    cloud: bool

    async def transcribe(self, pcm_16k: np.ndarray) -> str:
        """The words of a user's turn (float32 mono at 16 kHz)."""
        ...


class ChatModel(Protocol):
    name: str
    cloud: bool
    last_usage: tuple[int, int, bool]  # tokens in, out, estimated: of the last reply

    def reply(self, messages: list[dict[str, str]]) -> AsyncIterator[str]:
        """The reply's text, piece by piece as it is written."""
        ...


class TextToSpeech(Protocol):
    name: str
    cloud: bool

    def speak(self, text: str) -> AsyncIterator[np.ndarray]:
        """The sentence's audio, float32 mono at 24 kHz, piece by piece as it arrives."""
        ...


def status_kind(status: int) -> str:
    """The failure kind of an HTTP error status."""
    if status in (401, 403):
        return AUTH
    if status == 429:
        return RATE_LIMIT
    if status >= 500 or status in (408, 409):
        return SERVER
    return REQUEST


class Http:
    """The worker's aiohttp session, with the conversation's timeouts and failures mapped to kinds."""

    def __init__(self, timeouts: Timeouts, keys: Keys) -> None:
        self.timeouts = timeouts
        self.keys = keys
        self._session: aiohttp.ClientSession | None = None

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeouts.connect_s, connect=self.timeouts.connect_s)
            self._session = aiohttp.ClientSession(timeout=timeout, trust_env=False)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @asynccontextmanager
    async def request(
        self, provider: str, method: str, url: str, *, key_var: str | None, hint: str, first_byte_s: float | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The response once its headers are in (within first_byte_s), status checked; errors as failures.

        key_var: the variable holding the key this request sends (named when it is rejected).
        hint: what to check when the provider refuses the request (named in the error).
        """
        session = await self.session()
        wait = first_byte_s if first_byte_s is not None else self.timeouts.first_byte_s
        try:
            response = await asyncio.wait_for(session.request(method, url, **kwargs), wait)
        except asyncio.TimeoutError:
            raise ProviderFailure(TIMEOUT, provider, f"no answer within {wait:g} s") from None
        except aiohttp.ClientError as e:
            raise ProviderFailure(CONNECT, provider, self.keys.redact(f"cannot connect ({type(e).__name__}: {e})")) from None
        except OSError as e:
            raise ProviderFailure(CONNECT, provider, self.keys.redact(f"cannot connect ({e})")) from None
        try:
            if response.status >= 400:
                await self._refuse(provider, response, key_var, hint)
            try:
                yield response
            except asyncio.TimeoutError:
                raise ProviderFailure(TIMEOUT, provider, f"the stream stalled for over {self.timeouts.idle_s:g} s") from None
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, aiohttp.ServerDisconnectedError) as e:
                raise ProviderFailure(CUT, provider, self.keys.redact(f"the stream broke off ({type(e).__name__})")) from None
        finally:
            response.release()

    async def _refuse(self, provider: str, response: aiohttp.ClientResponse, key_var: str | None, hint: str) -> None:
        try:
            body = await asyncio.wait_for(response.text(), self.timeouts.idle_s)
        except Exception:
            body = ""
        detail = self.keys.redact(_error_message(body))
        kind = status_kind(response.status)
        what = f"{response.status}{': ' + detail if detail else ''}"
        if kind == AUTH:
            if key_var is None:
                raise ProviderRequestError(f"{provider} refused the request as unauthorized ({what}); check {hint}")
            raise CascadeKeyError(f"{key_var} was rejected by {provider} ({what}); set a valid key in {key_var}")
        if kind == REQUEST:
            raise ProviderRequestError(f"{provider} refused the request ({what}); check {hint}")
        raise ProviderFailure(kind, provider, f"HTTP {what}")

    async def read(self, response: aiohttp.ClientResponse) -> bytes:
        """The next piece of a streamed body (b"" at its end), within the idle timeout."""
        return await asyncio.wait_for(response.content.readany(), self.timeouts.idle_s)

    async def read_all(self, response: aiohttp.ClientResponse) -> bytes:
        """A whole (small) body, within the idle timeout."""
        return await asyncio.wait_for(response.read(), self.timeouts.idle_s)

    async def readline(self, response: aiohttp.ClientResponse) -> bytes:
        return await asyncio.wait_for(response.content.readline(), self.timeouts.idle_s)

    async def ok(self, url: str, headers: dict[str, str]) -> bool:
        """A probe: does GET url answer 2xx within the connect and first-byte timeouts?"""
        session = await self.session()

        async def get() -> bool:
            async with session.get(url, headers=headers) as response:
                return response.status < 300

        try:
            return await asyncio.wait_for(get(), self.timeouts.connect_s + self.timeouts.first_byte_s)
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
            return False


def _error_message(body: str) -> str:
    """The provider's own message from an error body (OpenAI's and ElevenLabs' JSON shapes), one line, short."""
    try:
        data = json.loads(body)
    except ValueError:
        return " ".join(body.split())[:200]
    if isinstance(data, dict):
        for key in ("error", "detail"):
            value = data.get(key)
            if isinstance(value, dict):
                value = value.get("message") or value.get("status") or json.dumps(value)
            if isinstance(value, str):
                return " ".join(value.split())[:200]
    return " ".join(body.split())[:200]
