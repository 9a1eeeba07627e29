"""Personas: a voice and a text prompt (plus optional sampling overrides) under one name.

Built-in personas are the TOML files in the repository's `personas/` folder. Files in the user's
folder, `$XDG_CONFIG_HOME/aimsvoice/personas/` (default `~/.config/aimsvoice/personas/`), add to
them or override them; a persona's name is its file stem, case-insensitive. A persona file:

    display_name = "HeadCoach"      # optional; default: the name
    description = "One line."       # optional
    voice = "VARM2"                 # optional (default NATF2): a voice of the model (`aimsvoice
                                    #   voices`) or a .wav/.pt path, relative to the file's folder
    text_prompt = \"\"\"
    You are a head coach ...        # required; runs of whitespace become one space
    \"\"\"

    [sampling]                      # optional, any of:
    temp_text = 0.7                 #   temperatures >= 0
    topk_text = 25                  #   top-k >= 1
    temp_audio = 0.8
    topk_audio = 250

    [cascade]                       # optional: when the cascade or the local tier runs the persona
    voice_id = "EXAVITQu4vr4xnSDxMaL"   # the ElevenLabs voice
    llm_model = "llama-3.3-70b-versatile"  # the chat model (--llm-model wins)
    local_voice = "en-us+klatt"     # espeak-ng's voice, or a Piper .onnx voice file

The text prompt is written the way PersonaPlex was trained (role, name, facts, scenario, in the
second person) and without `<system>` tags: the engine adds them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from . import xdg
from .errors import PersonaError
from .layout import VOICE_NAMES, VOICE_SUFFIXES

DEFAULT_PERSONA = "assistant"
DEFAULT_VOICE = "NATF2"  # the reference's assistant example voice
PERSONA_SUFFIX = ".toml"

_TEMP_KEYS = ("temp_text", "temp_audio")
_TOPK_KEYS = ("topk_text", "topk_audio")
_SAMPLING_KEYS = (*_TEMP_KEYS, *_TOPK_KEYS)
_TOP_KEYS = ("display_name", "description", "voice", "text_prompt", "sampling", "cascade")
_CASCADE_KEYS = ("voice_id", "llm_model", "local_voice")


@dataclass(frozen=True)
class Persona:
    """A named conditioning for PersonaPlex: a voice prompt, a text prompt, sampling overrides.

    `voice` is a voice name of the model (NVIDIA's built-ins, `layout.VOICE_NAMES`, or a fine-tune's
    own) or the absolute path of a .wav or .pt file. A sampling field left as None means the
    engine's default.
    """

    name: str
    display_name: str
    description: str
    voice: str
    text_prompt: str
    temp_text: float | None
    topk_text: int | None
    temp_audio: float | None
    topk_audio: int | None
    source: Path
    cascade: dict[str, str] = field(default_factory=dict, hash=False)  # [cascade]: voice_id, llm_model, local_voice

    @property
    def is_builtin(self) -> bool:
        """True for a persona shipped with aimsvoice, False for one from the user's folder."""
        return self.source.parent == builtin_dir()


def builtin_dir() -> Path:
    """The folder of the built-in personas: `personas/` at the repository root."""
    return Path(__file__).resolve().parent.parent / "personas"


def user_dir() -> Path:
    """The folder of the user's personas: `$XDG_CONFIG_HOME/aimsvoice/personas`."""
    return xdg.config_dir() / "personas"


def load_all() -> tuple[dict[str, Persona], list[PersonaError]]:
    """Every persona that loads, by name, sorted (the built-ins, then the user's, which override by
    name), and an error for each persona file that does not: one bad file hides no good one."""
    catalog, clashes = _catalog()
    errors: list[PersonaError] = list(clashes)
    found: dict[str, Persona] = {}
    for name, path in sorted(catalog.items()):
        try:
            found[name] = _parse(path, name)
        except PersonaError as e:
            errors.append(e)
    return found, errors


def load(name: str | None = None) -> Persona:
    """The persona called `name` (case-insensitive); None means `DEFAULT_PERSONA`.

    Only that persona's file is parsed, so a broken file elsewhere does not get in the way.
    Raises `PersonaError` for an unknown name (listing the choices) or an invalid file.
    """
    key = DEFAULT_PERSONA if name is None else name.strip().lower()
    catalog, clashes = _catalog()
    for clash in clashes:
        if clash.name == key:
            raise clash
    path = catalog.get(key)
    if path is None:
        choices = ", ".join(sorted(catalog)) or "none found"
        raise PersonaError(
            f"unknown persona {name or key!r}; choose one of: {choices} "
            f"(or add your own as {user_dir() / (key + PERSONA_SUFFIX)})"
        )
    return _parse(path, key)


class DuplicatePersonaError(PersonaError):
    """Two files of one folder define the same persona name (names are case-insensitive)."""

    def __init__(self, name: str, first: Path, second: Path) -> None:
        super().__init__(f"{first} and {second} both define persona {name!r} (names are case-insensitive); rename or remove one")
        self.name = name


def _catalog() -> tuple[dict[str, Path], list[DuplicatePersonaError]]:
    """Persona name -> file, user files replacing built-ins of the same name; and the names two files claim."""
    builtin, builtin_errors = _files_in(builtin_dir())
    user, user_errors = _files_in(user_dir())
    return {**builtin, **user}, builtin_errors + user_errors


def _files_in(folder: Path) -> tuple[dict[str, Path], list[DuplicatePersonaError]]:
    found: dict[str, Path] = {}
    clashes: dict[str, DuplicatePersonaError] = {}
    if not folder.is_dir():
        return found, []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() != PERSONA_SUFFIX or path.name.startswith(".") or not path.is_file():
            continue
        name = path.stem.lower()
        if name in found or name in clashes:
            clashes.setdefault(name, DuplicatePersonaError(name, found.pop(name, path), path))
            continue
        found[name] = path
    return found, list(clashes.values())


def _parse(path: Path, name: str) -> Persona:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise PersonaError(f"cannot read persona file {path}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise PersonaError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from e
    except tomllib.TOMLDecodeError as e:
        raise PersonaError(f"{path}: invalid TOML: {e}; fix that line") from e

    _reject_unknown(data, _TOP_KEYS, path, "")
    # One space between words: prompts in PersonaPlex's training were single lines, and this lets
    # a TOML file wrap a long prompt over several lines.
    text_prompt = " ".join(_string(data, "text_prompt", path, "").split())
    if not text_prompt:
        raise PersonaError(
            f'{path}: text_prompt is missing or empty; add text_prompt = "You are ..."'
        )

    sampling = data.get("sampling", {})
    if not isinstance(sampling, dict):
        raise PersonaError(
            f"{path}: sampling must be a table ([sampling] with {', '.join(_SAMPLING_KEYS)})"
        )
    _reject_unknown(sampling, _SAMPLING_KEYS, path, "[sampling] ")
    cascade = data.get("cascade", {})
    if not isinstance(cascade, dict):
        raise PersonaError(f"{path}: cascade must be a table ([cascade] with {', '.join(_CASCADE_KEYS)})")
    _reject_unknown(cascade, _CASCADE_KEYS, path, "[cascade] ")
    cascade = {key: _string(cascade, key, path, "").strip() for key in _CASCADE_KEYS if key in cascade}

    return Persona(
        name=name,
        display_name=_string(data, "display_name", path, "").strip() or name,
        description=" ".join(_string(data, "description", path, "").split()),
        voice=_voice(_string(data, "voice", path, DEFAULT_VOICE), path),
        text_prompt=text_prompt,
        temp_text=_temperature(sampling, "temp_text", path),
        topk_text=_topk(sampling, "topk_text", path),
        temp_audio=_temperature(sampling, "temp_audio", path),
        topk_audio=_topk(sampling, "topk_audio", path),
        source=path,
        cascade={key: value for key, value in cascade.items() if value},
    )


def _reject_unknown(
    table: dict[str, Any], allowed: tuple[str, ...], path: Path, where: str
) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise PersonaError(
            f"{path}: unknown {where}key {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(allowed)}"
        )


def _string(data: dict[str, Any], key: str, path: Path, default: str) -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise PersonaError(f'{path}: {key} must be a string, e.g. {key} = "..."')
    return value


def _voice(value: str, path: Path) -> str:
    """A voice name of the model (NVIDIA's built-ins in their canonical case), or a .wav/.pt file made absolute."""
    name = value.strip()
    if name.upper() in VOICE_NAMES:
        return name.upper()
    if Path(name).suffix.lower() in VOICE_SUFFIXES:
        file = Path(name).expanduser()
        file = file if file.is_absolute() else path.parent / file
        if file.is_file():
            return str(file.resolve())
        raise PersonaError(
            f"{path}: voice file {file} does not exist; fix the path or use a voice of the model (`aimsvoice voices`)"
        )
    if name and not any(sep in name for sep in ("/", "\\")):
        return name  # another voice of the model (a fine-tune's): checked against the model when it loads
    raise PersonaError(
        f"{path}: voice {value!r} is neither a voice name nor a .wav/.pt file; use a voice of the model "
        f"(`aimsvoice voices`, e.g. {DEFAULT_VOICE}) or a path to a .wav file"
    )


def _temperature(sampling: dict[str, Any], key: str, path: Path) -> float | None:
    value = sampling.get(key)
    if value is None:
        return None
    # bool is an int in Python; `temp_text = true` is a mistake, not 1.0.
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number or not math.isfinite(value) or value < 0:
        raise PersonaError(f"{path}: [sampling] {key} = {value!r} must be a number >= 0")
    return float(value)


def _topk(sampling: dict[str, Any], key: str, path: Path) -> int | None:
    value = sampling.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PersonaError(f"{path}: [sampling] {key} = {value!r} must be a whole number >= 1")
    return value
