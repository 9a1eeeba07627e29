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
