"""Write tests/data/parity/reference-*: NVIDIA's PersonaPlex reference, run offline on the tiny model.

    git clone https://github.com/NVIDIA/personaplex /tmp/personaplex
    git -C /tmp/personaplex checkout 3428dfd95309a7f3c84fd93259ded0f810d1ff91
    .venv/bin/python -c "from aimsvoice.engine import ensure_tiny_model; print(ensure_tiny_model())"
    .venv/bin/python scripts/parity-goldens.py --reference /tmp/personaplex --model <that folder>

The reference's `moshi` package (a fork of an old moshi) is imported from the checkout in place of the
installed one, so this script imports nothing of aimsvoice: it reads the tiny model's own configs and
hands them to the reference's loaders, and answers the reference's hub downloads with the model's
files. It runs `run_inference` from the reference's `offline.py` with greedy decoding on the CPU, for
the cases tests/test_parity.py compares. Nothing of the reference is kept but its outputs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PARITY = Path(__file__).resolve().parent.parent / "tests" / "data" / "parity"
TEXT_PROMPT = "You are a head coach pushing for action. Keep it short."  # as in tests/test_parity.py
CASES = (  # name, voice (a file of the model's voices/ or of PARITY), LM dtype
    ("builtin-voice-float32", "voices/VARM2.pt", "float32"),
    ("wav-voice-bfloat16", "voice.wav", "bfloat16"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="a checkout of github.com/NVIDIA/personaplex")
    parser.add_argument("--model", type=Path, required=True, help="the tiny model's folder")
    parser.add_argument("--out", type=Path, default=PARITY)
    args = parser.parse_args()

    sys.path.insert(0, str(args.reference / "moshi"))
    import torch
    from moshi import offline
    from moshi.models import loaders

    assert Path(loaders.__file__).is_relative_to(args.reference), f"moshi came from {loaders.__file__}, not the reference"
    config = json.loads((args.model / "config.json").read_text())
    mimi_config = json.loads((args.model / config.pop("mimi_config_name")).read_text())
    for target, source in ((loaders._seanet_kwargs, mimi_config["seanet"]), (loaders._quantizer_kwargs, mimi_config["quantizer"]),
                           (loaders._transformer_kwargs, mimi_config["transformer"])):
        target.clear()
        target.update(source)
    loaders._lm_kwargs.clear()
    loaders._lm_kwargs.update(config)

    files = {name: str(args.model / name) for name in ("config.json", loaders.MIMI_NAME, loaders.MOSHI_NAME, loaders.TEXT_TOKENIZER_NAME)}
    offline.hf_hub_download = lambda repo, name, **_: files[name]
    get_moshi_lm = loaders.get_moshi_lm
    for name, voice, dtype in CASES:
        loaders.get_moshi_lm = lambda *a, dtype=getattr(torch, dtype), **k: get_moshi_lm(*a, dtype=dtype, **k)
        voice_path = args.model / voice if voice.startswith("voices/") else args.out / voice
        offline.run_inference(
            input_wav=str(args.out / "user.wav"), output_wav=str(args.out / f"reference-{name}.wav"),
            output_text=str(args.out / f"reference-{name}.json"), text_prompt=TEXT_PROMPT,
            voice_prompt_path=str(voice_path), tokenizer_path=None, moshi_weight=None, mimi_weight=None,
            hf_repo="local", device="cpu", seed=-1, temp_audio=0.8, temp_text=0.7, topk_audio=250, topk_text=25,
            greedy=True, save_voice_prompt_embeddings=False,
        )
        print(f"wrote reference-{name}.wav and .json")


if __name__ == "__main__":
    main()
