"""The aimsvoice command line: parse, call one library function, print. Only this file knows Typer."""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from . import __version__, layout
from . import personas as personas_lib
from .errors import AimsvoiceError
from .outputs import STDIO, OutputPathError, check_outputs

app = typer.Typer(
    name="aimsvoice",
    help="A local, full-duplex voice agent: NVIDIA PersonaPlex on your own GPU.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
MAX_SEED = 2**63 - 1


def _finite(value: float | None) -> float | None:
    """Typer's ranges let nan and inf through; a number of seconds or minutes must be finite."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


def _version(show: bool) -> None:
    if show:
        console.print(f"aimsvoice {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """A local, full-duplex voice agent: NVIDIA PersonaPlex on your own GPU."""


# Markup and highlighting off: file names, persona texts and messages are printed as they are
# ("[agent].wav" stays itself); styles come from `style=` and Text, never from the string.
console = Console(markup=False, highlight=False)
err_console = Console(stderr=True, markup=False, highlight=False)


PersonaOpt = Annotated[
    Optional[str],
    typer.Option("--persona", "-p", help="Persona name (see `aimsvoice personas`); default: assistant."),
]
ModelOpt = Annotated[
    Optional[str],
    typer.Option("--model", "-m", help="`tiny` (built-in demo model), a model folder, or default: the pulled weights."),
]
class Device(str, Enum):
    auto = "auto"
    cuda = "cuda"
    cpu = "cpu"


class Dtype(str, Enum):
    auto = "auto"
    bfloat16 = "bfloat16"
    float32 = "float32"


class Context(str, Enum):
    pinned = "pinned"
    ring = "ring"


DeviceOpt = Annotated[Device, typer.Option("--device", help="auto (CUDA when available), cuda or cpu.")]
ContextOpt = Annotated[
    Context,
    typer.Option(
        "--context",
        help="The attention window (240 s for PersonaPlex 7B): pinned keeps the persona's prompt in it for good; "
        "ring lets it roll out, as NVIDIA's reference does.",
    ),
]
DtypeOpt = Annotated[Dtype, typer.Option("--dtype", help="auto (bfloat16 on CUDA, float32 on CPU), bfloat16 or float32.")]


class Quantize(str, Enum):
    auto = "auto"
    none = "none"
    int8 = "int8"


QuantizeOpt = Annotated[
    Quantize,
    typer.Option(
        "--quantize",
        help="int8: 8-bit weights for the transformer and the depformer (PersonaPlex 7B in about 11 GB with one "
        "conversation, instead of 19); auto: int8 on a CUDA GPU where the model does not fit otherwise; none.",
    ),
]


class EngineChoice(str, Enum):
    auto = "auto"
    personaplex = "personaplex"
    cascade = "cascade"
    local = "local"


EngineOpt = Annotated[
    EngineChoice,
    typer.Option(
        "--engine",
        help="auto: PersonaPlex on a CUDA GPU that fits it with the pulled weights (or a --model), else the cascade "
        "when GROQ_API_KEY and ELEVENLABS_API_KEY are set, else local; personaplex; cascade (Groq speech-to-text and "
        "chat, ElevenLabs speech); local (offline: PocketSphinx, espeak-ng or Piper, a local LLM server if any).",
    ),
]
LlmUrlOpt = Annotated[
    Optional[str],
    typer.Option(
        "--llm-url", metavar="URL",
        help="Cascade and local: an OpenAI-compatible server for the reply instead of Groq's chat (Ollama, llama.cpp, "
        "vLLM), e.g. http://127.0.0.1:11434/v1.",
    ),
]
LlmModelOpt = Annotated[
    Optional[str],
    typer.Option("--llm-model", help="Cascade and local: the chat model; default: llama-3.3-70b-versatile on Groq, the server's first with --llm-url."),
]
InputDeviceOpt = Annotated[
    Optional[str],
    typer.Option("--input-device", help="Live: the microphone, by index or part of its name (`aimsvoice devices`)."),
]
OutputDeviceOpt = Annotated[
    Optional[str],
    typer.Option("--output-device", help="Live: the speakers, by index or part of its name (`aimsvoice devices`)."),
]


@app.command(
    epilog="Examples:\n\n"
    "  aimsvoice talk --model tiny --persona headcoach --in user.wav --out agent.wav\n\n"
    "  aimsvoice talk --persona strategist --voice NATM1 --in q.wav --out a.wav --transcript a.json --greedy\n\n"
    "  aimsvoice talk --persona headcoach --input-device 'USB' --record call.wav --max-minutes 10\n\n"
    "  aimsvoice talk --aec --output-device 'Speakers'\n\n"
    "  aimsvoice talk --engine cascade --persona headcoach   # Groq + ElevenLabs: GROQ_API_KEY, ELEVENLABS_API_KEY\n\n"
    "  aimsvoice talk --engine local --llm-url http://127.0.0.1:11434/v1 --in q.wav --out a.wav\n\n"
    "  aimsvoice talk --model tiny --batch calls.jsonl --batch-size 8",
)
def talk(
    persona: PersonaOpt = None,
    in_path: Annotated[Optional[Path], typer.Option("--in", help="User audio file (any rate, any channels).")] = None,
    out_path: Annotated[Optional[Path], typer.Option("--out", help="Where to write the agent's audio (24 kHz WAV).")] = None,
    transcript: Annotated[Optional[Path], typer.Option("--transcript", help="Write the agent's words with times as JSON.")] = None,
    model: ModelOpt = None,
    engine: EngineOpt = EngineChoice.auto,
    llm_url: LlmUrlOpt = None,
    llm_model: LlmModelOpt = None,
    device: DeviceOpt = Device.auto,
    dtype: DtypeOpt = Dtype.auto,
    context: ContextOpt = Context.pinned,
    quantize: QuantizeOpt = Quantize.auto,
    voice: Annotated[
        Optional[str], typer.Option("--voice", help="Voice override: a voice of the model (`aimsvoice voices`) or a WAV path.")
    ] = None,
    text_prompt: Annotated[Optional[str], typer.Option("--text-prompt", help="Text prompt override (role, background).")] = None,
    greedy: Annotated[bool, typer.Option("--greedy", help="Greedy decoding instead of sampling.")] = False,
    seed: Annotated[
        Optional[int], typer.Option("--seed", min=0, max=MAX_SEED, help="Seed the samplers for a reproducible conversation.")
    ] = None,
    input_device: InputDeviceOpt = None,
    output_device: OutputDeviceOpt = None,
    no_ui: Annotated[bool, typer.Option("--no-ui", help="Live: plain status lines instead of the live view.")] = False,
    record: Annotated[
        Optional[Path], typer.Option("--record", help="Live: a stereo WAV (left you, right the agent) plus a .json beside it.")
    ] = None,
    max_minutes: Annotated[
        Optional[float],
        typer.Option("--max-minutes", min=0.0, max=7 * 24 * 60.0, callback=_finite, help="Live: end after this many minutes."),
    ] = None,
    idle_timeout: Annotated[
        Optional[float],
        typer.Option("--idle-timeout", min=0.0, max=86_400.0, callback=_finite, help="Live: end after this many seconds of your silence."),
    ] = None,
    aec: Annotated[
        Optional[bool],
        typer.Option(
            "--aec/--no-aec",
            help="Live: cancel the agent's voice from the microphone, for speakers. "
            "Default: on when the output's name says speakers, off for a headset or a name that does not tell.",
        ),
    ] = None,
    batch: Annotated[
        Optional[Path],
        typer.Option(
            "--batch",
            help='Many offline conversations: a .jsonl file, one {"in": ..., "out": ...} per line (optional: transcript, '
            "persona, voice, text_prompt, seed, greedy; the flags are the defaults).",
        ),
    ] = None,
    batch_size: Annotated[
        Optional[int],
        typer.Option("--batch-size", min=1, help="With --batch: conversations stepped together; default: all, as memory allows."),
    ] = None,
) -> None:
    """Hold a conversation with a persona: live on the microphone and speakers, offline with --in/--out, or many with --batch."""
    from . import session

    live_only = (input_device, output_device, record, max_minutes, idle_timeout, aec)
    if batch is not None:
        if in_path is not None or out_path is not None or transcript is not None:
            raise typer.BadParameter("--batch reads \"in\", \"out\" and \"transcript\" from each line; drop --in, --out and --transcript.")
        if no_ui or any(option is not None for option in live_only):
            raise typer.BadParameter("--batch runs offline conversations; drop the live options.")
    elif batch_size is not None:
        raise typer.BadParameter("--batch-size is for --batch.")
    if (in_path is None) != (out_path is None):
        raise typer.BadParameter("give both --in and --out for an offline conversation.")
    if in_path is not None and (no_ui or any(option is not None for option in live_only)):
        raise typer.BadParameter(
            "--input-device, --output-device, --no-ui, --record, --max-minutes, --idle-timeout and --aec/--no-aec "
            "are for live conversations; drop --in/--out to talk live."
        )
    if in_path is None and transcript is not None:
        raise typer.BadParameter("--transcript is for --in/--out; live, --record writes the transcript beside the WAV.")
    settings = session.TalkSettings(
        model=model, persona=persona, voice=voice, text_prompt=text_prompt,
        device=device.value, dtype=dtype.value, greedy=greedy, seed=seed, context=context.value, quantize=quantize.value,
        engine=engine.value, llm_url=llm_url, llm_model=llm_model,
    )
    notify = lambda line: err_console.print(line, soft_wrap=True)  # noqa: E731  the tier and why, on stderr
    if batch is not None:
        if engine not in (EngineChoice.auto, EngineChoice.personaplex):
            raise typer.BadParameter(f"--batch steps PersonaPlex conversations together; drop --engine {engine.value} or talk one by one.")
        _talk_batch(batch, replace(settings, engine="personaplex"), batch_size)
        return
    if in_path is None:
        from . import live
        from .audio.devices import AudioConfig
        from .ui import LiveView

        config = live.LiveConfig(
            audio=AudioConfig(input_device, output_device), record=record,
            max_minutes=max_minutes, idle_timeout=idle_timeout, aec=aec,
        )
        live.talk_on_devices(settings, config, LiveView(rich=not no_ui, console=console), notify=notify)
        return

    from .ui import OfflineProgress

    to_stdout = str(out_path) == STDIO  # the WAV goes to stdout: everything else to stderr
    report = err_console if to_stdout else console
    with OfflineProgress(err_console, words=None if to_stdout else console) as progress:
        result = session.talk_offline(settings, in_path, out_path, transcript, on_step=progress.step, notify=notify)
    written = ("standard output" if to_stdout else str(out_path)) + (f" and {transcript}" if transcript else "")
    if result.partial:
        raise session.Interrupted(
            f"interrupted after {result.duration_s:.2f} s of {result.input_s:.2f} s: wrote what was computed to "
            f"{written}" + (" (the transcript says partial)" if transcript else "")
        )
    report.print(f"wrote {written} ({result.duration_s:.2f} s)", soft_wrap=True)
    if (usage := session.usage_line(result.engine)) is not None:
        report.print(usage, soft_wrap=True)


def _talk_batch(path: Path, settings, batch_size: int | None) -> None:
    from .batch import talk_batch
    from .session import Interrupted
    from .ui import BatchProgress

    with BatchProgress(err_console) as progress:
        summary = talk_batch(path, settings, batch_size, progress)
    progress.summary(summary)
    if summary.interrupted:
        raise Interrupted(summary.interrupted)
    if summary.failed:
        raise typer.Exit(1)


personas_app = typer.Typer()
app.add_typer(personas_app, name="personas")


def _voice_label(voice: str) -> str:
    return Path(voice).name if voice.lower().endswith(".wav") else voice


def _sampling_label(persona: personas_lib.Persona) -> str:
    fields = ("temp_text", "topk_text", "temp_audio", "topk_audio")
    overrides = [f"{f}={getattr(persona, f)}" for f in fields if getattr(persona, f) is not None]
    return ", ".join(overrides) or "engine defaults"


@personas_app.callback(
    invoke_without_command=True,
    epilog="Examples: aimsvoice personas; aimsvoice personas show headcoach",
)
def personas_list(ctx: typer.Context) -> None:
    """List the personas: built-in ones, and yours from ~/.config/aimsvoice/personas/*.toml.

    A file of yours with a built-in's name overrides it; `talk` uses the default persona unless
    given --persona. A file that does not load is named with its error (exit code 1), the others
    are listed.
    """
    if ctx.invoked_subcommand is not None:
        return
    caption = f"your personas: {personas_lib.user_dir()} · details: aimsvoice personas show NAME"
    table = Table(caption=caption)
    for column in ("name", "display name", "voice", "description", "source"):
        table.add_column(column, overflow="fold")
    found, broken = personas_lib.load_all()
    for name, persona in found.items():
        label = Text(name, style="bold")
        if name == personas_lib.DEFAULT_PERSONA:
            label.append(" (default)", style="dim")
        table.add_row(
            label,
            Text(persona.display_name),
            Text(_voice_label(persona.voice)),
            Text(persona.description),
            "built-in" if persona.is_builtin else "user",
        )
    console.print(table)
    for error in broken:
        err_console.print(Text.assemble(("error: ", "bold red"), f"{error} (not listed)"), soft_wrap=True)
    if broken:
        raise typer.Exit(1)


@personas_app.command("show", epilog="Example: aimsvoice personas show strategist")
def personas_show(
    name: Annotated[
        str, typer.Argument(help="Persona name (case-insensitive); see `aimsvoice personas`.")
    ],
) -> None:
    """Print one persona in full: its fields, sampling overrides and text prompt."""
    persona = personas_lib.load(name)
    fields = Table.grid(padding=(0, 2))
    fields.add_column(style="bold")
    fields.add_column(overflow="fold")
    default = " (default)" if persona.name == personas_lib.DEFAULT_PERSONA else ""
    fields.add_row("name", Text(persona.name + default))
    fields.add_row("display name", Text(persona.display_name))
    fields.add_row("description", Text(persona.description or "-"))
    fields.add_row("voice", Text(persona.voice))
    fields.add_row("sampling", Text(_sampling_label(persona)))
    origin = "built-in" if persona.is_builtin else "user"
    fields.add_row("source", Text(f"{origin}: {persona.source}"))
    console.print(fields)
    console.print(Panel(Text(persona.text_prompt), title="text prompt", title_align="left"))


@app.command(
    "pull-weights",
    epilog="Examples:\n\n"
    "  hf auth login   # once, after accepting the license on the model page\n\n"
    "  aimsvoice pull-weights\n\n"
    "  aimsvoice pull-weights --dir ~/models/personaplex --token hf_...\n\n"
    "  HF_HUB_OFFLINE=1 aimsvoice pull-weights --check",
)
def pull_weights(
    repo: Annotated[
        Optional[str], typer.Option("--repo", help=f"Hub repo to pull; default: {layout.REPO_ID}.")
    ] = None,
    revision: Annotated[
        Optional[str], typer.Option("--revision", help="Branch, tag or commit of the repo; default: main.")
    ] = None,
    directory: Annotated[
        Optional[Path],
        typer.Option("--dir", help="Download into this folder instead of the Hugging Face cache (HF_HOME)."),
    ] = None,
    token: Annotated[
        Optional[str], typer.Option("--token", help="Hugging Face token; default: HF_TOKEN, else `hf auth login`'s.")
    ] = None,
    check: Annotated[
        bool,
        typer.Option("--check", help="Verify the pulled files offline (presence, size, sha256); download nothing."),
    ] = False,
) -> None:
    """Download PersonaPlex (about 17 GB) from the Hugging Face hub; rerun to resume.

    The weights are gated. Once: sign in on https://huggingface.co/nvidia/personaplex-7b-v1 and
    accept the NVIDIA Open Model License there, then log in here with `hf auth login` (or set
    HF_TOKEN, or pass --token).

    Pulls config.json, the LM, Mimi, the text tokenizer and voices.tgz (extracted safely into
    voices/) into the hub cache or --dir, checks free disk space first and verifies every sha256.
    `talk` and `bench` then use these weights with no --model. --check verifies them offline.
    """
    from . import weights

    if check:
        if token is not None or revision is not None:
            raise typer.BadParameter("--check works offline from what the pull recorded; drop --token and --revision.")
        with err_console.status("checking sizes and sha256 of the pulled files..."):
            report = weights.check(local_dir=directory, repo_id=repo)
        console.print(f"model: {report.model_dir} ({report.repo_id} @ {report.commit[:12]})", highlight=False, soft_wrap=True)
        for f in report.files:
            detail = f" ({f.detail})" if f.detail else ""
            console.print(f"  {f.status:<10} {f.name}  {f.n_bytes:,} bytes{detail}", highlight=False, soft_wrap=True)
        if (failure := report.failure()) is not None:
            raise failure
        console.print(f"all {len(report.files)} files present and intact", highlight=False, soft_wrap=True)
        return
    spec = weights.WeightsSpec(
        repo_id=repo or layout.REPO_ID, revision=revision or weights.DEFAULT_REVISION, local_dir=directory, token=token
    )
    try:
        result = weights.pull(spec, console=err_console)
    except KeyboardInterrupt:
        err_console.print("interrupted: rerun `aimsvoice pull-weights` to resume where it stopped", highlight=False, soft_wrap=True)
        raise
    if result.offline:
        console.print(f"HF_HUB_OFFLINE is set: using the weights already in {result.model_dir}", highlight=False, soft_wrap=True)
    else:
        console.print(
            f"{result.repo_id} @ {result.commit[:12]} is ready in {result.model_dir} "
            f"({result.n_files_downloaded} files downloaded, {result.n_bytes_downloaded:,} bytes)",
            highlight=False,
            soft_wrap=True,
        )
    console.print("`aimsvoice talk` uses it by default; `aimsvoice pull-weights --check` verifies it offline.")


@app.command(
    epilog="Examples:\n\n"
    "  aimsvoice voices\n\n"
    "  aimsvoice voices --model tiny\n\n"
    "  aimsvoice talk --voice VARF1 --in q.wav --out a.wav",
)
def voices(model: ModelOpt = None) -> None:
    """List the voices of the model in use: `--voice` and a persona's `voice` take any of them, or a WAV path.

    A voice is a file in the model's voices/ folder: a prompt state (.pt, replayed as is) or audio
    (.wav, encoded once and cached). NVIDIA's eighteen come with the weights; a fine-tune may bring others.
    """
    from .engine import resolve_voice, voice_names
    from .errors import ModelNotFoundError, VoiceNotFoundError
    from .session import resolve_model_dir
    from .ui import voices_table

    model_dir = resolve_model_dir(model)
    if not model_dir.is_dir():
        raise ModelNotFoundError(f"{model_dir}: no such model directory; check --model.")
    names = voice_names(model_dir)
    if not names:
        raise VoiceNotFoundError(
            f"{model_dir}: no voices in {layout.VOICES_DIR}/; run `aimsvoice pull-weights`, or give `talk --voice` a WAV path."
        )
    console.print(f"voices of {model_dir}, in {layout.VOICES_DIR}/:", markup=False, highlight=False, soft_wrap=True)
    console.print(voices_table([(name, resolve_voice(name, model_dir)) for name in names]))


@app.command(
    epilog="Examples:\n\n"
    "  aimsvoice devices\n\n"
    "  aimsvoice talk --input-device 2 --output-device 'USB Audio'",
)
def devices() -> None:
    """List audio devices (index, name, host API, channels, default rate; * = default).

    Pass an index, or part of a name, to `talk --input-device/--output-device`.
    """
    from .audio.devices import list_devices
    from .errors import AudioDeviceError
    from .ui import devices_table

    found = list_devices()
    if not found:
        raise AudioDeviceError("PortAudio sees no audio devices; connect one, check ALSA/PulseAudio, then rerun `aimsvoice devices`.")
    console.print(devices_table(found))


@app.command(
    epilog="Examples:\n\n"
    "  aimsvoice serve --model tiny\n\n"
    "  aimsvoice serve --ssl self-signed --max-sessions 8 --session-minutes 4 --idle-timeout 60\n\n"
    "  aimsvoice serve --host 0.0.0.0 --token-file ~/.config/aimsvoice/token --allow-origin https://app.example.com\n\n"
    "  aimsvoice serve --unload-after 600 --record calls/\n\n"
    "  aimsvoice serve --engine cascade --max-sessions 8   # no GPU: each session a Groq + ElevenLabs cascade\n\n"
    "  aimsvoice serve --ray --replicas 2 --max-sessions 8 --session-minutes 30 --host 0.0.0.0 --token-file token.txt",
)
def serve(
    model: ModelOpt = None,
    device: DeviceOpt = Device.auto,
    dtype: DtypeOpt = Dtype.auto,
    host: Annotated[str, typer.Option("--host", help="Address to listen on; beyond loopback a --token-file is required.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port (0: any free port).")] = 8998,
    ssl: Annotated[
        Optional[str],
        typer.Option(
            "--ssl", metavar="DIR|self-signed",
            help="TLS: a folder with cert.pem and key.pem, or `self-signed` (made once, kept in the config folder).",
        ),
    ] = None,
    max_sessions: Annotated[
        Optional[int], typer.Option("--max-sessions", min=1, help="Sessions at once, one batch row each; default: what memory holds, at most 16."),
    ] = None,
    session_minutes: Annotated[
        Optional[float],
        typer.Option("--session-minutes", min=0.01, max=7 * 24 * 60.0, callback=_finite, help="End a session after this many minutes live."),
    ] = None,
    idle_timeout: Annotated[
        float,
        typer.Option(
            "--idle-timeout", min=0.0, max=86_400.0, callback=_finite,
            help="End a session after this many seconds without the user's voice; 0: never.",
        ),
    ] = 300.0,
    unload_after: Annotated[
        Optional[float],
        typer.Option("--unload-after", min=0.0, max=86_400.0 * 365, callback=_finite, help="Unload the model after this many seconds without a session."),
    ] = None,
    token_file: Annotated[
        Optional[Path], typer.Option("--token-file", help="A file holding the bearer token clients must send (header or ?token=).")
    ] = None,
    allow_origin: Annotated[
        Optional[list[str]],
        typer.Option("--allow-origin", metavar="ORIGIN", help="A browser origin allowed to connect (repeatable; `*`: any)."),
    ] = None,
    record: Annotated[
        Optional[Path], typer.Option("--record", help="Keep a stereo WAV (left the user, right the agent) and a .json per session here.")
    ] = None,
    context: ContextOpt = Context.pinned,
    quantize: QuantizeOpt = Quantize.auto,
    engine: EngineOpt = EngineChoice.auto,
    llm_url: LlmUrlOpt = None,
    llm_model: LlmModelOpt = None,
    use_ray: Annotated[
        bool,
        typer.Option("--ray", help="Serve on Ray Serve: replicas of this server, one per GPU, behind one address (pip install 'aimsvoice[ray]')."),
    ] = False,
    replicas: Annotated[Optional[int], typer.Option("--replicas", min=1, help="With --ray: this many replicas (default 1).")] = None,
    autoscale: Annotated[
        Optional[str],
        typer.Option("--autoscale", metavar="MIN:MAX", help="With --ray: between MIN and MAX replicas, by sessions; MIN stay warm."),
    ] = None,
    ray_address: Annotated[
        Optional[str],
        typer.Option(
            "--ray-address", metavar="ADDR",
            help="With --ray: deploy on this Ray cluster (`auto` on one of its machines, or HEAD:6379) and leave it there; default: a Ray of its own here.",
        ),
    ] = None,
) -> None:
    """Serve PersonaPlex over WebSocket: several sessions on one device, each a row of one batch.

    /api/chat speaks NVIDIA's reference protocol (PersonaPlex and Moshi web clients work
    unchanged); /ws the JSON persona_config protocol with raw PCM or Opus; /healthz and /metrics
    (Prometheus) for operations. Sessions beyond --max-sessions are refused at once with a reason.
    """
    from .server import ServerConfig
    from .server import serve as run_server

    config = ServerConfig(
        model=model, device=device.value, dtype=dtype.value, host=host, port=port, ssl=ssl, max_sessions=max_sessions,
        session_minutes=session_minutes, idle_timeout=idle_timeout or None, unload_after=unload_after,
        token_file=token_file, allow_origins=tuple(allow_origin or ()), record=record, context=context.value, quantize=quantize.value,
        engine=engine.value, llm_url=llm_url, llm_model=llm_model,
    )
    if use_ray:
        _serve_on_ray(config, replicas, autoscale, ray_address)
        return
    if replicas is not None or autoscale is not None or ray_address is not None:
        raise typer.BadParameter("--replicas, --autoscale and --ray-address are for --ray.")
    run_server(config, echo=lambda line: err_console.print(line, soft_wrap=True))


def _serve_on_ray(config, replicas: Optional[int], autoscale: Optional[str], ray_address: Optional[str]) -> None:
    from .server.ray import RayConfig, parse_autoscale, serve_ray

    if replicas is not None and autoscale is not None:
        raise typer.BadParameter("give --replicas N or --autoscale MIN:MAX, not both.")
    try:
        scale = parse_autoscale(autoscale) if autoscale is not None else None
    except ValueError as e:
        raise typer.BadParameter(f"--autoscale {e}") from None
    ray_config = RayConfig(replicas=replicas or 1, autoscale=scale, address=ray_address)
    serve_ray(config, ray_config, echo=lambda line: err_console.print(line, soft_wrap=True))


bench_app = typer.Typer(
    help="Measure frame compute, and switch latency and interruption handling (Full-Duplex-Bench).",
    no_args_is_help=True,
)
app.add_typer(bench_app, name="bench")


class RandomArchitecture(str, Enum):
    """Architectures `--random-weights` can build."""

    SEVEN_B = "7b"
    SMALL = "small"


JsonOpt = Annotated[bool, typer.Option("--json", help="Print the results as JSON on stdout (progress goes to stderr).")]
AppendOpt = Annotated[
    Optional[Path], typer.Option("--append", help="Append a dated entry (command, machine, figures) to this markdown file.")
]


def _command_line() -> str:
    return shlex.join(["aimsvoice", *sys.argv[1:]])


def _print_json(data: dict) -> None:
    sys.stdout.write(json.dumps(data, indent=1) + "\n")


@bench_app.command(
    "compute",
    epilog="Examples:\n\n"
    "  aimsvoice bench compute --model tiny\n\n"
    "  aimsvoice bench compute --frames 500 --json\n\n"
    "  aimsvoice bench compute --model tiny --batch 1,2,4,8\n\n"
    "  aimsvoice bench compute --random-weights 7b --device cuda --batch 1,8\n\n"
    "  aimsvoice bench compute --random-weights 7b --device cuda --quantize int8 --no-cuda-graphs\n\n"
    "  aimsvoice bench compute --random-weights 7b --frames 3 --dtype bfloat16 --device cpu",
)
def bench_compute(
    model: ModelOpt = None,
    random_weights: Annotated[
        Optional[RandomArchitecture],
        typer.Option(
            "--random-weights",
            help="Build this architecture with random weights: speed and memory with no download "
            "(7b: PersonaPlex; small: its layout at dim 512, 6 layers).",
        ),
    ] = None,
    device: DeviceOpt = Device.auto,
    dtype: DtypeOpt = Dtype.auto,
    quantize: QuantizeOpt = Quantize.auto,
    cuda_graphs: Annotated[
        bool, typer.Option("--cuda-graphs/--no-cuda-graphs", help="On CUDA: run the transformer and depformer steps as CUDA graphs.")
    ] = True,
    frames: Annotated[int, typer.Option("--frames", min=1, max=1_000_000, help="Ticks to measure per batch size.")] = 100,
    warmup: Annotated[
        Optional[int],
        typer.Option("--warmup", min=0, max=100_000, help="Ticks run and discarded first; default: 10, or --frames if fewer."),
    ] = None,
    batch: Annotated[
        str, typer.Option("--batch", help="Conversations stepped together; a list measures each in turn, e.g. 1,2,4,8.")
    ] = "1",
    context: ContextOpt = Context.pinned,
    as_json: JsonOpt = False,
    append: AppendOpt = None,
) -> None:
    """Time one 80 ms tick stage by stage (Mimi encode, temporal transformer, depformer, Mimi decode), for B conversations at once.

    Prints p50/p95/p99/max per stage after warm-up (device-synchronized on CUDA), the real-time
    factor, the cost per conversation (the tick over B), frames/s, headroom against the 80 ms
    budget and peak memory (CUDA max allocated, or RSS), for each batch size.
    """
    from . import bench as bench_lib
    from .bench.report import append_entry, compute_view, markdown_compute

    check_outputs({"--append": append})
    settings = bench_lib.ComputeSettings(
        model=model, random_weights=random_weights.value if random_weights else None,
        device=device.value, dtype=dtype.value, batch_sizes=_batch_sizes(batch), frames=frames, warmup=warmup,
        context=context.value, quantize=quantize.value, cuda_graphs=cuda_graphs,
    )
    with err_console.status("loading the model and measuring..."):
        report = bench_lib.run_compute(settings)
    if as_json:
        _print_json(report.to_json())
    else:
        console.print(compute_view(report))
    if append is not None:
        append_entry(append, markdown_compute(report, _command_line()))
        err_console.print(f"appended an entry to {append}", highlight=False)


def _batch_sizes(text: str) -> tuple[int, ...]:
    from .errors import BenchError

    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise BenchError(f"--batch {text}: give whole numbers separated by commas, e.g. --batch 1,2,4,8.") from None


@bench_app.command(
    "turns",
    epilog="Examples:\n\n"
    "  aimsvoice bench turns --model tiny\n\n"
    "  aimsvoice bench turns --persona headcoach --live --json\n\n"
    "  aimsvoice bench turns --engine cascade   # the same suite through Groq + ElevenLabs\n\n"
    "  aimsvoice bench turns --suite ~/data/full-duplex-bench/v1.0/candor_turn_taking --out out/fdb",
)
def bench_turns(
    model: ModelOpt = None,
    suite: Annotated[
        Optional[Path], typer.Option("--suite", help="A Full-Duplex-Bench folder; default: the built-in suite.")
    ] = None,
    persona: PersonaOpt = None,
    device: DeviceOpt = Device.auto,
    dtype: DtypeOpt = Dtype.auto,
    seed: Annotated[int, typer.Option("--seed", min=0, max=MAX_SEED // 2, help="Seed of the first sample (sample i: seed + i).")] = 0,
    tail: Annotated[
        float, typer.Option("--tail", min=0.0, max=600.0, callback=_finite, help="Seconds of silence fed after each input.wav.")
    ] = 5.0,
    out: Annotated[
        Optional[Path], typer.Option("--out", help="Write each sample's agent audio (output.wav) and result.json here.")
    ] = None,
    live: Annotated[
        bool, typer.Option("--live", help="Also run the suite through the real-time loop: latencies as a user hears them.")
    ] = False,
    context: ContextOpt = Context.pinned,
    quantize: QuantizeOpt = Quantize.auto,
    engine: EngineOpt = EngineChoice.auto,
    llm_url: LlmUrlOpt = None,
    llm_model: LlmModelOpt = None,
    as_json: JsonOpt = False,
    append: AppendOpt = None,
) -> None:
    """Smooth turn-taking, user interruption and pause handling, measured as Full-Duplex-Bench does.

    Latencies are in model time (no compute, no buffering); with --live the same suite also goes
    through the live loop (capture, frames, engine, playback queue) on a virtual sound card paced by
    the engine's compute, so compute and buffering count, side by side with model time. The agent's
    speech is found with the Silero VAD instead of ASR word timestamps (see the method line).
    """
    from . import bench as bench_lib
    from .bench.report import append_entry, markdown_turns, turns_view

    check_outputs({"--append": append})
    if out is not None and out.exists() and not out.is_dir():
        raise OutputPathError(f"--out {out}: is a file; give a folder for the samples' audio and results")
    settings = bench_lib.TurnsSettings(
        model=model, suite=suite, persona=persona, device=device.value, dtype=dtype.value, seed=seed, tail_s=tail, out=out, live=live,
        context=context.value, quantize=quantize.value, engine=engine.value, llm_url=llm_url, llm_model=llm_model,
    )

    def progress(result: bench_lib.SampleResult) -> None:
        measured = result.turn_taking or result.interruption or result.pause
        mode = "live" if result.live else "model time"
        took = "take-over" if measured and measured.take_over else "no take-over"
        err_console.print(f"{result.name} ({mode}): {took}", highlight=False)

    report = bench_lib.run_turns(settings, on_sample=progress, notify=lambda line: err_console.print(line, soft_wrap=True))
    if as_json:
        _print_json(report.to_json())
    else:
        console.print(turns_view(report))
    if append is not None:
        append_entry(append, markdown_turns(report, _command_line()))
        err_console.print(f"appended an entry to {append}", highlight=False)


@bench_app.command(
    "context",
    epilog="Examples:\n\n"
    "  aimsvoice bench context --model tiny --minutes 60\n\n"
    "  aimsvoice bench context --model tiny --minutes 10 --context ring",
)
def bench_context(
    model: ModelOpt = "tiny",
    device: DeviceOpt = Device.auto,
    dtype: DtypeOpt = Dtype.auto,
    context: ContextOpt = Context.pinned,
    quantize: QuantizeOpt = Quantize.auto,
    minutes: Annotated[
        float, typer.Option("--minutes", min=0.1, max=1440.0, callback=_finite, help="Audio to run the conversation for.")
    ] = 60.0,
    persona: PersonaOpt = None,
    text_prompt: Annotated[Optional[str], typer.Option("--text-prompt", help="Text prompt override (role, background).")] = None,
    as_json: JsonOpt = False,
    append: AppendOpt = None,
) -> None:
    """One long conversation past the attention window: memory at its first wrap and after, step time inside and past it."""
    from .bench.context import ContextSettings, context_line, run_context
    from .bench.report import append_entry, markdown_context

    check_outputs({"--append": append})
    settings = ContextSettings(
        model=model, device=device.value, dtype=dtype.value, context=context.value, quantize=quantize.value, minutes=minutes,
        persona=persona, text_prompt=text_prompt,
    )
    with err_console.status("running the conversation..."):
        report = run_context(settings)
    if as_json:
        _print_json(report.to_json())
    else:
        console.print(context_line(report), soft_wrap=True)
    if append is not None:
        append_entry(append, markdown_context(report, _command_line()))
        err_console.print(f"appended an entry to {append}")


@bench_app.command("aec", epilog="Examples:\n\n  aimsvoice bench aec\n\n  aimsvoice bench aec --noise-suppression --json")
def bench_aec(
    seconds: Annotated[
        float, typer.Option("--seconds", min=5.0, max=3600.0, callback=_finite, help="Length of the simulated echo.")
    ] = 20.0,
    delay_ms: Annotated[
        float, typer.Option("--delay-ms", min=0.0, max=500.0, callback=_finite, help="Echo path delay (AEC3 follows up to ~500 ms).")
    ] = 80.0,
    noise_suppression: Annotated[bool, typer.Option("--noise-suppression", help="Also run noise suppression.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Cost per 80 ms frame and ERLE of the echo canceller (talk --aec) on a simulated echo path."""
    from .audio.aec import measure_aec

    report = measure_aec(seconds=seconds, delay_ms=delay_ms, noise_suppression=noise_suppression)
    if as_json:
        _print_json(report)
        return
    console.print(
        f"echo canceller: {report['ms_per_frame_median']:.2f} ms per 80 ms frame (median; p90 "
        f"{report['ms_per_frame_p90']:.2f}, max {report['ms_per_frame_max']:.2f}), "
        f"ERLE {report['erle_db']:.1f} dB, over {report['frames']} frames with a {delay_ms:g} ms echo",
        highlight=False,
    )


def main() -> None:
    """Console entry point: every error is one line on stderr and a non-zero exit (2 for a misused command).

    Known errors print their message; a misused command prints click's message and where the help
    is; Ctrl-C that no command handled prints "interrupted" (exit 130). AIMSVOICE_DEBUG=1 shows
    tracebacks.
    """
    try:
        code = app(standalone_mode=False)
    except AimsvoiceError as e:
        if os.environ.get("AIMSVOICE_DEBUG"):
            raise
        _fail(str(e), e.exit_code, prefix="" if e.exit_code == 130 else "error: ")
    except (KeyboardInterrupt, typer.Abort):
        _fail("interrupted", 130, prefix="")
    except Exception as e:
        if not _is_usage_error(e):
            raise
        message = e.format_message()  # type: ignore[attr-defined]
        if not message:  # no arguments at all: the help was printed
            sys.exit(e.exit_code)  # type: ignore[attr-defined]
        context = getattr(e, "ctx", None)
        where = f" (see `{context.command_path} --help`)" if context is not None else ""
        _fail(f"{message}{where}", e.exit_code)  # type: ignore[attr-defined]
    if code == 130:  # Typer turns a KeyboardInterrupt into a quiet exit status 130
        _fail("interrupted", 130, prefix="")
    sys.exit(code if isinstance(code, int) else 0)


def _is_usage_error(error: Exception) -> bool:
    """Click's errors (a misused command: an unknown option, a bad value), whichever click Typer runs on:
    they carry a message and an exit code."""
    return callable(getattr(error, "format_message", None)) and isinstance(getattr(error, "exit_code", None), int)


def _fail(message: str, code: int, prefix: str = "error: ") -> None:
    err_console.print(Text.assemble((prefix, "bold red"), " ".join(message.split())), soft_wrap=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
