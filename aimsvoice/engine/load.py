"""Build and load PersonaPlex from a model directory with moshi's own loaders.

The LM is built on the meta device and its weights are assigned straight onto the target device
and dtype (moshi's `get_moshi_lm`); with int8 weights it is loaded piece by piece and quantized as
it loads (int8.py). Mimi comes from moshi's `get_mimi`, with a non-default Mimi config when
config.json names one (`mimi_config_name`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sentencepiece
import torch
from moshi.models import loaders
from moshi.models.compression import MimiModel
from moshi.models.lm import LMModel
from safetensors import SafetensorError, safe_open

from .. import layout
from ..audio.format import FRAME_RATE, SAMPLE_RATE
from ..errors import DeviceError, ModelFileError, ModelNotFoundError
from .contract import ConversationSpec
from .quantize import check_quantize, choose_quantize, need_bytes, safetensors_shapes

logger = logging.getLogger(__name__)

AGENT_CODEBOOKS = 8  # Mimi codebooks per speaker
# Below this many LM parameters a CPU step is bound by per-op overhead, not arithmetic.
SMALL_MODEL_PARAMS = 50_000_000

# PersonaPlex 7B: Moshi 7B whose depformer predicts 8 agent + 8 user codebooks.
PERSONAPLEX_LM_KWARGS: dict[str, Any] = {
    **loaders._lm_kwargs,
    "dep_q": 16,
    "delays": [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1],
}

_FILE_KEYS = ("moshi_name", "mimi_name", "tokenizer_name", "mimi_config_name")  # config.json keys naming files
# Keys of config.json that name files or uses, not the LM's architecture (moshi's convention).
_NON_ARCHITECTURE_KEYS = (
    "moshi_name", "mimi_name", "tokenizer_name", "mimi_config_name", "lora_name", "model_type",
    "lm_gen_config", "tts_config", "stt_config", "model_id",
)


@dataclass(frozen=True)
class ModelFiles:
    """The resolved files of a model directory and the LM architecture it declares."""

    directory: Path
    lm: Path
    mimi: Path
    tokenizer: Path
    mimi_config: dict[str, Any] | None
    lm_kwargs: dict[str, Any]


@dataclass
class LoadedModel:
    """Everything the engine needs, on its device."""

    files: ModelFiles
    lm: LMModel
    mimi: MimiModel
    tokenizer: sentencepiece.SentencePieceProcessor
    device: torch.device
    dtype: torch.dtype
    fingerprint: str  # identifies these weights, for caches keyed by model
    quantize: str = "none"  # "int8": the transformer's and the depformer's linear weights are int8 (int8.py)


def resolve_device(name: str) -> torch.device:
    """"auto" -> CUDA when available, else CPU; "cuda" without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(
            "--device cuda: no CUDA GPU is visible to torch; use --device cpu (slow for the 7B model) "
            "or check the NVIDIA driver with nvidia-smi."
        )
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise DeviceError(f"--device {name}: unknown device; use auto, cuda or cpu.")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """"auto" -> bfloat16 on CUDA (as the reference runs), float32 on CPU."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    dtypes = {"bfloat16": torch.bfloat16, "float32": torch.float32}
    if name not in dtypes:
        raise DeviceError(f"--dtype {name}: unknown dtype; use auto, bfloat16 or float32.")
    return dtypes[name]


def read_model_files(directory: Path) -> ModelFiles:
    """Resolve a model directory's files from its config.json, checking they are all there.

    A config.json without architecture keys (no "dim") means the PersonaPlex 7B architecture.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelNotFoundError(f"{directory}: no such model directory; check --model.")
    config_path = directory / layout.CONFIG_NAME
    config: dict[str, Any] = _read_json_object(config_path, "re-download it with `aimsvoice pull-weights`") if config_path.is_file() else {}
    for key in _FILE_KEYS:
        if key in config and not (isinstance(config[key], str) and config[key]):
            raise ModelFileError(f"{config_path}: {key} must name a file of the folder, not {json.dumps(config[key])}; fix or remove it.")
    lm = directory / config.get("moshi_name", layout.LM_NAME)
    mimi = directory / config.get("mimi_name", layout.MIMI_NAME)
    tokenizer = directory / config.get("tokenizer_name", layout.TEXT_TOKENIZER_NAME)
    mimi_config_name = config.get("mimi_config_name")
    needed = [lm, mimi, tokenizer] + ([directory / mimi_config_name] if mimi_config_name else [])
    missing = [p.name for p in needed if not p.is_file()]
    if missing:
        raise ModelFileError(
            f"{directory}: missing {', '.join(missing)}; run `aimsvoice pull-weights` "
            "(or `aimsvoice pull-weights --check` to see what is wrong)."
        )
    mimi_config = None
    if mimi_config_name:
        mimi_config = _read_json_object(directory / mimi_config_name, "use the Mimi config that came with these weights")
    for key in _NON_ARCHITECTURE_KEYS:
        config.pop(key, None)
    lm_kwargs = config if "dim" in config else dict(PERSONAPLEX_LM_KWARGS)
    return ModelFiles(directory, lm, mimi, tokenizer, mimi_config, lm_kwargs)


class ModelCheck:
    """What can be checked before the weights load: the model's files (on creation), then each conversation's
    voice (it resolves) and system prompt (it fits the attention window, see `prompts.check_prompt_fits`)."""

    def __init__(self, directory: Path) -> None:
        self.files = read_model_files(directory)
        self._tokenizer: sentencepiece.SentencePieceProcessor | None = None

    def conversation(self, spec: ConversationSpec) -> None:
        from .prompts import check_prompt_fits, load_voice, wrap_system_tags

        voice_steps = load_voice(spec.voice, self.files.directory).n_steps if spec.voice else 0
        n_tokens = 0
        if spec.text_prompt.strip():
            self._tokenizer = self._tokenizer or _load_tokenizer(self.files)
            n_tokens = len(self._tokenizer.encode(wrap_system_tags(spec.text_prompt)))
        check_prompt_fits(voice_steps, n_tokens, self.files.lm_kwargs.get("context"))


def check_model(directory: Path, specs: tuple[ConversationSpec, ...] = ()) -> ModelFiles:
    """Check the model's files and these conversations before the weights load (see `ModelCheck`)."""
    check = ModelCheck(directory)
    for spec in specs:
        check.conversation(spec)
    return check.files


def _load_tokenizer(files: ModelFiles) -> sentencepiece.SentencePieceProcessor:
    try:
        return sentencepiece.SentencePieceProcessor(str(files.tokenizer))  # type: ignore[call-arg]
    except Exception as e:  # sentencepiece raises RuntimeError, OSError or worse on a bad file
        raise ModelFileError(
            f"{files.tokenizer}: not a sentencepiece model ({e}); re-download with `aimsvoice pull-weights`."
        ) from e


def _read_json_object(path: Path, fix: str) -> dict[str, Any]:
    """A JSON file that must hold an object, or one line naming what is wrong with it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{path}: not valid JSON ({e}); {fix}.") from None
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read it ({e.strerror}); check its permissions.") from None
    if not isinstance(data, dict):
        raise ModelFileError(f"{path}: holds a JSON {type(data).__name__}, not an object of settings; {fix}.")
    return data


def fingerprint(files: ModelFiles) -> str:
    """A cheap identity of the weights: config, sizes, and the head and tail of each weight file."""
    digest = hashlib.sha256(json.dumps(files.lm_kwargs, sort_keys=True).encode())
    for path in (files.lm, files.mimi, files.tokenizer):
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with path.open("rb") as f:
            digest.update(f.read(1 << 20))
            f.seek(max(0, size - (1 << 20)))
            digest.update(f.read(1 << 20))
    return digest.hexdigest()[:16]


def _check_safetensors(path: Path) -> None:
    """Fail with one line on a truncated or corrupt safetensors file before building anything."""
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            if keys:  # reading the last tensor catches files cut short after their header
                f.get_slice(keys[-1])[...]
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise ModelFileError(
            f"{path}: corrupt or truncated safetensors file ({e}); re-download it with "
            "`aimsvoice pull-weights`."
        ) from e


def _shape_error(path: Path, e: Exception) -> ModelFileError:
    first = str(e).strip().splitlines()
    detail = next((line.strip() for line in first if "size mismatch" in line or "key" in line.lower()), first[-1] if first else "")
    return ModelFileError(
        f"{path}: weights do not fit the architecture in config.json ({detail[:300]}); "
        "use the config.json that came with these weights."
    )


def resolve_quantize(quantize: str, files: ModelFiles, device: torch.device, dtype: torch.dtype) -> str:
    """"auto" -> "int8" on a CUDA device whose free memory the model does not fit in full precision
    (quantize.py's rule), else "none"; "none" and "int8" as they are."""
    if check_quantize(quantize) != "auto":
        return quantize
    if device.type != "cuda":
        return "none"
    from .memory import free_bytes

    mimi_params = sum(math.prod(shape) for _, shape in safetensors_shapes(files.mimi))
    need = need_bytes(safetensors_shapes(files.lm), files.lm_kwargs, str(dtype).removeprefix("torch."), "none", mimi_params)
    free = free_bytes(device)
    chosen = choose_quantize(free, need)
    logger.info("--quantize auto: %s (%.1f GB free, %.1f GB needed in %s)", chosen, free / 1e9, need / 1e9, dtype)
    return chosen


def load_model(directory: Path, device: str = "auto", dtype: str = "auto", quantize: str = "auto") -> LoadedModel:
    """Load LM, Mimi and text tokenizer from a model directory onto `device`.

    quantize: "none", "int8" (the transformer's and depformer's linear weights, quantized as they
    load: int8.py) or "auto" (`resolve_quantize`).
    """
    files = read_model_files(directory)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    for path in (files.lm, files.mimi):
        _check_safetensors(path)
    quantize = resolve_quantize(quantize, files, torch_device, torch_dtype)

    logger.info("loading mimi from %s", files.mimi)
    try:
        mimi = loaders.get_mimi(files.mimi, files.mimi_config, device=torch_device, num_codebooks=AGENT_CODEBOOKS)
    except RuntimeError as e:
        raise _shape_error(files.mimi, e) from e
    except Exception as e:  # a Mimi config of the wrong shape fails anywhere in moshi's constructors
        raise ModelFileError(
            f"{files.directory}: the Mimi config its config.json names is not one moshi can build "
            f"({type(e).__name__}: {e}); use the Mimi config that came with these weights."
        ) from e
    if mimi.sample_rate != SAMPLE_RATE or mimi.frame_rate != FRAME_RATE:
        raise ModelFileError(
            f"{files.mimi}: Mimi runs at {mimi.sample_rate} Hz / {mimi.frame_rate} fps, aimsvoice needs "
            f"{SAMPLE_RATE} Hz / {FRAME_RATE} fps; use PersonaPlex's Mimi."
        )

    logger.info("loading the LM from %s%s", files.lm, " (int8 weights)" if quantize == "int8" else "")
    try:
        if quantize == "int8":
            from .int8 import load_lm

            lm = load_lm(files.lm, files.lm_kwargs, torch_device, torch_dtype)
        else:
            lm = loaders.get_moshi_lm(files.lm, lm_kwargs=files.lm_kwargs, device=torch_device, dtype=torch_dtype)
    except RuntimeError as e:
        raise _shape_error(files.lm, e) from e
    except Exception as e:  # wrong keys or types in the architecture fail anywhere in moshi's constructors
        raise ModelFileError(
            f"{files.directory / layout.CONFIG_NAME}: not a moshi LM config ({type(e).__name__}: {e}); "
            "fix or remove its architecture keys."
        ) from e
    if lm.dep_q != 2 * AGENT_CODEBOOKS or lm.n_q != 2 * AGENT_CODEBOOKS:
        raise ModelFileError(
            f"{files.lm}: n_q={lm.n_q}, dep_q={lm.dep_q}; PersonaPlex needs 16 and 16 "
            "(8 agent + 8 user codebooks). This looks like a plain Moshi checkpoint."
        )

    if torch_device.type == "cpu" and sum(p.numel() for p in lm.parameters()) < SMALL_MODEL_PARAMS:
        # Extra intra-op threads only add synchronization to tiny ops, and on a busy machine they
        # spin against other work: measured on 2 cores, 26 ms of CPU per frame on one thread, 300 on two.
        torch.set_num_threads(1)
    tokenizer = _load_tokenizer(files)
    return LoadedModel(files, lm, mimi, tokenizer, torch_device, torch_dtype, fingerprint(files), quantize)
