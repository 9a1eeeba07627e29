"""Output files: checked before anything is computed, replaced only once complete.

`check_outputs` runs before a model loads, so an unwritable or clashing path costs nothing: every
output's folder exists (or can be made) and takes a new file, no output is a folder, an input, or
another output's path. `replacing` writes beside the target and renames over it when the new
file is complete, so a failure or a Ctrl-C never leaves half a file where a good one was.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import AimsvoiceError

STDIO = "-"  # `--in -` / `--out -`: standard input or output


class OutputPathError(AimsvoiceError):
    """An output path that cannot be written as asked."""


def check_outputs(outputs: dict[str, Path | None], inputs: tuple[Path | None, ...] = ()) -> None:
    """Raise OutputPathError for the first output (by option name) that cannot be written as asked.

    outputs: option name (e.g. "--out") -> path; None or "-" (standard output) are skipped.
    inputs: paths read by the same command; an output may not be one of them.
    """
    seen: dict[Path, str] = {}
    read = {_identity(p): p for p in inputs if p is not None and str(p) != STDIO}
    for option, path in outputs.items():
        if path is None or str(path) == STDIO:
            continue
        where = f"{option} {path}"
        if path.is_dir():
            raise OutputPathError(f"{where}: is a folder; give a file name, e.g. {path / 'agent.wav'}")
        identity = _identity(path)
        if identity in read:
            raise OutputPathError(f"{where}: is also an input; writing it would destroy {read[identity]}; give another path")
        if identity in seen:
            raise OutputPathError(f"{where}: {seen[identity]} writes there too; give each output its own path")
        seen[identity] = option
        _check_writable(path, where)


def _identity(path: Path) -> Path:
    """The file a path names: symlinks and `..` resolved, so two spellings of one file compare equal."""
    return Path(os.path.realpath(path.expanduser()))


def _check_writable(path: Path, where: str) -> None:
    """The nearest existing folder above `path` must be a folder that takes a new file (tried for real)."""
    folder = path.expanduser().absolute().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise OutputPathError(f"{where}: {folder} is a file, not a folder; pick a path in a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".aimsvoice-probe-"):
            pass
    except OSError as e:
        raise OutputPathError(f"{where}: cannot write in {folder} ({e.strerror or e}); pick a writable folder") from None


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; once the block ends without error, it replaces `path` atomically.

    The folder is made if missing; on an error (or Ctrl-C) the temporary file is removed and any
    file already at `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
