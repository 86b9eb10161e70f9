"""Atomic writes: nothing pelk writes is ever left half-written.

Files are written to a temporary sibling and renamed over the target;
directories are assembled in a temporary sibling and swapped in.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _errors_name(path: Path) -> Iterator[None]:
    """OSErrors while preparing to write ``path`` name ``path``, not a parent or a temp file."""
    try:
        yield
    except (FileExistsError, NotADirectoryError):  # mkdir met a file where a directory was needed
        raise NotADirectoryError(errno.ENOTDIR, "cannot write here: a parent of it is a file, not a directory",
                                 str(path)) from None
    except OSError as error:
        raise OSError(error.errno, f"cannot write here: {error.strerror}", str(path)) from None


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same directory, then rename."""
    path = Path(path)
    with _errors_name(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(temp_name, 0o666 & ~_umask())  # mkstemp makes 0600; give the file ordinary permissions
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_directory(path: str | Path, marker: str | None = None) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces ``path`` whole.

    On any error the temporary directory is removed and ``path`` is untouched.
    ``marker`` names the file every directory of this kind holds: an existing,
    non-empty ``path`` without it was not written by pelk and is refused, since
    it would be replaced whole.
    """
    path = Path(os.path.abspath(path))  # "." or "dir/.." name the folder itself, not a sibling to create in it
    real, cwd = Path(os.path.realpath(path)), Path.cwd()  # getcwd() has symlinks resolved
    if real == cwd or real in cwd.parents:
        raise OSError(errno.EBUSY, "cannot replace the current directory or a folder that holds it", str(path))
    if path.exists() and not path.is_dir():
        raise OSError(errno.ENOTDIR, "exists and is not a directory", str(path))
    if marker and path.is_dir() and any(path.iterdir()) and not (path / marker).is_file():
        raise OSError(errno.ENOTEMPTY, f"a directory with other files in it (no {marker}: not written by pelk); "
                                       f"it would be replaced whole, so pick a new or empty directory", str(path))
    with _errors_name(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        temp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        os.chmod(temp_dir, 0o777 & ~_umask())  # mkdtemp makes 0700
        yield temp_dir
        if path.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            try:
                os.replace(path, backup / "old")
                try:
                    os.replace(temp_dir, path)
                except BaseException:
                    os.replace(backup / "old", path)  # the swap failed: the old directory goes back
                    raise
            finally:
                shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(temp_dir, path)
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
