"""The aimsvoice command line: parse, call one library function, print. Only this file knows Typer."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from .errors import AimsvoiceError

app = typer.Typer(
    name="aimsvoice",
    help="A local, full-duplex voice agent: NVIDIA PersonaPlex on your own GPU.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


# --- talk ---
# --- end talk ---


# --- personas ---
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from . import personas as personas_lib

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
    given --persona.
    """
    if ctx.invoked_subcommand is not None:
        return
    caption = f"your personas: {personas_lib.user_dir()} · details: aimsvoice personas show NAME"
    table = Table(caption=caption)
    for column in ("name", "display name", "voice", "description", "source"):
        table.add_column(column, overflow="fold")
    for name, persona in personas_lib.load_all().items():
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
# --- end personas ---


# --- pull-weights ---
# --- end pull-weights ---


# --- devices ---
@app.command()
def devices() -> None:
    """List audio input and output devices (comes with the live-audio issue)."""
    err_console.print("aimsvoice devices comes with live audio; not available in this version yet.")
    raise typer.Exit(2)
# --- end devices ---


# --- bench ---
@app.command()
def bench() -> None:
    """Measure switch latency, interruption handling and frame compute (comes in its own issue)."""
    err_console.print("aimsvoice bench comes in its own issue; not available in this version yet.")
    raise typer.Exit(2)
# --- end bench ---


def main() -> None:
    """Console entry point: known errors become one line on stderr and a non-zero exit."""
    try:
        app()
    except AimsvoiceError as e:
        if os.environ.get("AIMSVOICE_DEBUG"):
            raise
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
