"""`aimsvoice` and `python -m aimsvoice`: Ctrl-C during start-up exits quietly, then the CLI runs.

Importing the CLI (typer, rich) takes a moment; a Ctrl-C then would print a traceback from
whatever module was loading. Until `cli.main` runs, it ends the process with status 130 instead.
"""

from __future__ import annotations

import os
import signal


def main() -> None:
    """The console script's entry point."""

    def quiet(signum: int, frame: object) -> None:
        os.write(2, b"interrupted\n")
        os._exit(130)

    signal.signal(signal.SIGINT, quiet)
    from .cli import main as cli_main

    signal.signal(signal.SIGINT, signal.default_int_handler)
    cli_main()


if __name__ == "__main__":
    main()
