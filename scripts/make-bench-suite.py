#!/usr/bin/env python3
"""Regenerate aimsvoice's built-in `bench turns` suite with espeak-ng (apt-get install espeak-ng).

Writes assets/benchsuite/ in Full-Duplex-Bench's layout, one folder per sample:

    smooth_turn_taking/tt-N/input.wav + turn_taking.json  [{"text", "timestamp": [turn_end, turn_end]}]
    pause_handling/ph-N/input.wav     + pause.json        [{"text", "timestamp": [pause_start, pause_end]}]
    user_interruption/ui-N/input.wav  + interrupt.json    [{"context", "interrupt", "timestamp": [start, end]}]

and tests/data/agent-voice.wav, the speech the scripted test engines talk with (see `continuous`).

Every utterance is synthesized on its own, trimmed to its first and last sample above -40 dBFS
and placed on the timeline with silence of exact length, so the timestamps are exact to the
sample (24 kHz, the model's rate; 16-bit WAV). Usage: .venv/bin/python scripts/make-bench-suite.py
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

import numpy as np
import soxr

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "assets" / "benchsuite"
AGENT_VOICE = ROOT / "tests" / "data" / "agent-voice.wav"
RATE = 24_000
LEAD_IN_S = 0.5  # silence before the user's first word
TRIM_DBFS = -40.0
PEAK = 0.5  # every utterance is peak-normalized to -6 dBFS

TURN_TAKING = [
    ("en-us", 165, "Hi, I just moved to the city. Can you recommend a good place to eat tonight?"),
    ("en-gb+f3", 160, "I have been feeling tired all week. What do you think I should change in my routine?"),
    ("en-us+m3", 155, "Could you explain how a heat pump keeps a house warm in the winter?"),
]

# The first part ends on a comma, so espeak keeps a rising, unfinished intonation into the pause.
PAUSES = [
    ("en-us+f2", 160, "I would like to book a table for,", 1.0, "four people on Friday evening."),
    ("en-gb", 165, "The thing I keep forgetting is,", 1.5, "where I left the spare keys."),
    ("en-us", 150, "My plan for the weekend is to,", 2.0, "clean the garage and call my sister."),
]

# The gap after the question is when the agent should be answering; the user then barges in.
INTERRUPTIONS = [
    ("en-us", 160, "Can you walk me through how to make fresh pasta at home?", 3.0,
     "Actually, wait. I don't have any eggs. What can I use instead?"),
    ("en-gb+f3", 160, "Tell me about the history of the Roman Empire.", 3.0,
     "Sorry to cut in, can you just tell me when it ended?"),
    ("en-us+m3", 155, "What should I pack for a week of hiking in the mountains?", 2.5,
     "Hold on, it is going to be winter. Does that change anything?"),
]

# The scripted engines' speech: one sentence without punctuation (no pauses), starting on a vowel.
AGENT_TEXT = (
    "all right here is what I would do early on warm up slowly then work on one thing at a time "
    "and always end the day with a short review of what went well and what did not"
)
GAP_DBFS = -30.0  # 10 ms blocks quieter than this are cut from the agent's speech


def say(text: str, voice: str, words_per_minute: int) -> np.ndarray:
    """One utterance from espeak-ng at 24 kHz, peak-normalized and trimmed to its sound."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "say.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(words_per_minute), "-w", str(path), text], check=True)
        with wave.open(str(path)) as f:
            rate = f.getframerate()
            pcm = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2").astype(np.float32) / 32768.0
    pcm = soxr.resample(pcm, rate, RATE, quality="VHQ").astype(np.float32)
    pcm *= PEAK / np.max(np.abs(pcm))
    loud = np.flatnonzero(np.abs(pcm) > 10 ** (TRIM_DBFS / 20))
    return pcm[loud[0] : loud[-1] + 1]


def continuous(pcm: np.ndarray) -> np.ndarray:
    """Speech with its quiet 10 ms blocks (stop closures, word gaps) cut out: speech at every instant.

    A scripted engine that stops talking at time T then stops sounding at T, whichever point of
    its speech T falls on, so the tests can hold the bench's stop times to the truth.
    """
    hop = RATE // 100
    blocks = pcm[: len(pcm) // hop * hop].reshape(-1, hop)
    loud = np.sqrt(np.mean(blocks**2, axis=1)) > 10 ** (GAP_DBFS / 20)
    return blocks[loud].reshape(-1)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * RATE), dtype=np.float32)


def seconds(n_samples: int) -> float:
    return round(n_samples / RATE, 6)


def write_wav(path: Path, pcm: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(RATE)
        f.writeframes(np.round(np.clip(pcm, -1, 1) * 32767).astype("<i2").tobytes())


def write_sample(folder: Path, pcm: np.ndarray, task_file: str, annotation: list[dict]) -> None:
    write_wav(folder / "input.wav", pcm)
    (folder / task_file).write_text(json.dumps(annotation, indent=1) + "\n")


def main() -> None:
    if shutil.which("espeak-ng") is None:
        sys.exit("espeak-ng not found: apt-get install espeak-ng")
    shutil.rmtree(SUITE, ignore_errors=True)
    lead = silence(LEAD_IN_S)
    for i, (voice, wpm, text) in enumerate(TURN_TAKING, 1):
        turn = say(text, voice, wpm)
        end = seconds(len(lead) + len(turn))
        write_sample(SUITE / "smooth_turn_taking" / f"tt-{i}", np.concatenate([lead, turn]), "turn_taking.json",
                     [{"text": text, "timestamp": [end, end]}])
    for i, (voice, wpm, first, pause_s, second) in enumerate(PAUSES, 1):
        part1, part2 = say(first, voice, wpm), say(second, voice, wpm)
        start = seconds(len(lead) + len(part1))
        write_sample(SUITE / "pause_handling" / f"ph-{i}", np.concatenate([lead, part1, silence(pause_s), part2]),
                     "pause.json", [{"text": f"{first} [PAUSE] {second}", "timestamp": [start, round(start + pause_s, 6)]}])
    for i, (voice, wpm, context, gap_s, interrupt) in enumerate(INTERRUPTIONS, 1):
        question, barge_in = say(context, voice, wpm), say(interrupt, voice, wpm)
        start = len(lead) + len(question) + round(gap_s * RATE)
        pcm = np.concatenate([lead, question, silence(gap_s), barge_in])
        write_sample(SUITE / "user_interruption" / f"ui-{i}", pcm, "interrupt.json",
                     [{"context": context, "interrupt": interrupt,
                       "timestamp": [seconds(start), seconds(start + len(barge_in))]}])
    write_wav(AGENT_VOICE, continuous(say(AGENT_TEXT, "en-us+m1", 170)))
    print(f"wrote {SUITE} and {AGENT_VOICE}")


if __name__ == "__main__":
    main()
