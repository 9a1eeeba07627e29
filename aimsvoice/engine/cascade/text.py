"""The reply's text: cut into sentences as the model streams it, and what part of a sentence was heard (pure)."""

from __future__ import annotations

import re

CHARS_PER_S = 14.0  # speaking rate assumed where only the audio's length is known (about 150 words a minute)
MAX_SENTENCE_CHARS = 240  # a longer run without a full stop is cut at a comma or a space

_ABBREVIATIONS = frozenset({"mr.", "mrs.", "ms.", "dr.", "st.", "vs.", "etc.", "e.g.", "i.e.", "no.", "jr.", "sr.", "prof."})
_END = re.compile(r"[.!?…]+[\"')\]]*\s|\n+")


class SentenceSplitter:
    """Feed the model's text as it streams; sentences come out as soon as they are complete.

    A sentence ends at . ! ? or … followed by white space (so "3.5" and "example.com" do not
    end one, nor the common abbreviations), or at a line break; `flush` gives the rest.
    """

    def __init__(self) -> None:
        self._text = ""

    def feed(self, delta: str) -> list[str]:
        self._text += delta
        sentences = []
        start = 0
        for match in _END.finditer(self._text):
            candidate = self._text[start : match.end()].strip()
            last_word = candidate.split()[-1].lower() if candidate.split() else ""
            if last_word in _ABBREVIATIONS:
                continue
            if candidate:
                sentences.append(candidate)
            start = match.end()
        self._text = self._text[start:]
        while len(self._text) > MAX_SENTENCE_CHARS:
            cut = max(self._text.rfind(", ", 0, MAX_SENTENCE_CHARS), self._text.rfind(" ", 0, MAX_SENTENCE_CHARS))
            cut = cut + 1 if cut > 0 else MAX_SENTENCE_CHARS
            sentences.append(self._text[:cut].strip())
            self._text = self._text[cut:]
        return sentences

    def flush(self) -> list[str]:
        rest, self._text = self._text.strip(), ""
        return [rest] if rest else []


def heard_fraction(text: str, heard_s: float, total_s: float | None) -> float:
    """How much of a sentence's text was heard after `heard_s` of its audio.

    total_s: the whole sentence's audio, when its stream is complete; else the fraction is
    estimated at CHARS_PER_S.
    """
    if total_s is not None and total_s > 0:
        return min(max(heard_s / total_s, 0.0), 1.0)
    return min(max(heard_s * CHARS_PER_S / max(len(text), 1), 0.0), 1.0)


def heard_words(text: str, fraction: float) -> str:
    """The words of `text` heard once `fraction` of it was spoken: those that ended by then."""
    if fraction >= 1.0:
        return text
    limit = fraction * len(text)
    return " ".join(m.group() for m in re.finditer(r"\S+", text) if m.end() <= limit)


def unheard_words(text: str, fraction: float) -> str:
    """The words of `text` not yet begun once `fraction` of it was spoken: a word under way counts as heard.

    Where a sentence's audio broke off and another voice finishes it, this is what that voice says:
    a word is skipped rather than said twice.
    """
    if fraction <= 0.0:
        return text
    limit = fraction * len(text)
    return " ".join(m.group() for m in re.finditer(r"\S+", text) if m.start() >= limit)
