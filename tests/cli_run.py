"""Running the `aimsvoice` entry point in-process, exactly as the console script does."""

from __future__ import annotations

import sys

import pytest

from aimsvoice import cli


def run_main(args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    """`aimsvoice ARGS` through `cli.main()`: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["aimsvoice", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (0 if code is None else int(code)), out, err
