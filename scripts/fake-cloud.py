#!/usr/bin/env python
"""Run a command against local fakes of Groq and ElevenLabs: the cascade's pipeline overhead, no network, no cost.

Starts tests/fakecloud.py's server on a loopback port, points GROQ_BASE_URL and ELEVENLABS_BASE_URL
at it with fake keys, runs the command, and stops. The fakes answer at once (or after --stt-ms,
--llm-first-ms then --llm-ms a word, --tts-ms before the first audio), with real speech for the agent's voice.

    .venv/bin/python scripts/fake-cloud.py -- aimsvoice bench turns --engine cascade
    .venv/bin/python scripts/fake-cloud.py --stt-ms 300 --llm-first-ms 250 --llm-ms 5 --tts-ms 250 -- aimsvoice bench turns --engine cascade
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fakecloud import FakeCloud, Plan, closed_port_url  # noqa: E402

REPLY = ("Sure, here is what I would do. Start with something simple tonight, and keep it close to home. "
         "Then see how you feel about it tomorrow.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stt-ms", type=float, default=0.0, help="speech-to-text answers after this long")
    parser.add_argument("--llm-first-ms", type=float, default=0.0, help="the chat model's first word comes after this long")
    parser.add_argument("--llm-ms", type=float, default=0.0, help="the chat model writes a word every this long")
    parser.add_argument("--tts-ms", type=float, default=0.0, help="speech starts after this long")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give a command after --")
    with FakeCloud(transcripts=["Can you recommend a good place to eat tonight?"], replies=[REPLY]) as fake:
        fake.plan("chat", *[Plan(delay_s=args.llm_first_ms / 1000.0, piece_delay_s=args.llm_ms / 1000.0)] * 1000)
        fake.plan("stt", *[Plan(delay_s=args.stt_ms / 1000.0)] * 1000)
        fake.plan("tts", *[Plan(delay_s=args.tts_ms / 1000.0)] * 1000)
        env = {**os.environ, **fake.env(), "OLLAMA_HOST": closed_port_url()}
        print(f"fakes of Groq and ElevenLabs at {fake.url}", file=sys.stderr)
        return subprocess.call(command, env=env)


if __name__ == "__main__":
    sys.exit(main())
