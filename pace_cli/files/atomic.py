"""Writing outputs atomically: a temporary name next to the target, fsync, then one rename.

Readers see the previous file (or folder) or the complete new one, never a half-written mix, and
a failed write says what went wrong in one line (:class:`WriteError`). Torch-free.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from pace_cli.errors import PaceError, one_line

__all__ = ["WriteError", "write_error", "write_text_atomic", "atomic_path", "atomic_dir", "check_can_write"]


class WriteError(PaceError):
    """Writing an output failed (disk full, quota, permissions); nothing half-written was left behind.

    The parts are the ``reason`` (``what``), the file (``where``, also ``path``) and the ``remedy``,
    so callers that know more (training knows its last checkpoint) can say it in their own words.
    """

    def __init__(self, path: str | Path, reason: str, remedy: str, errno_: int | None):
        self.errno = errno_
        super().__init__(reason, where=str(path), remedy=remedy)

    @property
    def path(self) -> Path:
        return Path(self.where)

    @property
    def reason(self) -> str:
        return self.what

    def _sentence(self) -> str:
        return f"{self.what} while writing '{self.where}'; {self.remedy} and run again"


_FULL = {errno.ENOSPC: "no space left on device", getattr(errno, "EDQUOT", errno.ENOSPC): "disk quota exceeded"}


def write_error(path: str | Path, error: OSError) -> WriteError:
    """One line for a failed write; a full disk is named as such, since that is what the user can fix."""
    if error.errno in _FULL:
        return WriteError(path, _FULL[error.errno], "free some space", error.errno)
    reason = error.strerror or one_line(error)
    return WriteError(path, f"write failed ({reason})", "check the folder's permissions and free space", error.errno)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a text file under a temporary name and rename it into place; a failure leaves the old file."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    except OSError as e:
        raise write_error(path, e) from None


def check_can_write(path: Path, overwrite: bool) -> None:
    """Refuse to clobber an existing file unless asked to, and make sure the parent folder exists."""
    path = Path(path)
    if path.is_dir():
        raise PaceError(f"output '{path}' is a folder", remedy="give a file path instead")
    if path.exists() and not overwrite:
        raise PaceError(f"output file '{path}' exists", remedy="pass --overwrite to replace it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PaceError(e.strerror or one_line(e), where=f"cannot create folder '{path.parent}' for '{path}'") from None


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; move it into place only if the block succeeds.

    Readers never see a half-written ``final``; on any exception (Ctrl-C included) the temporary
    file is removed and the exception propagates.
    """
    final = Path(final)
    tmp = final.with_name(f".{final.name}.tmp-{secrets.token_hex(4)}")
    try:
        yield tmp
        fsync_file(tmp)
        with contextlib.suppress(OSError):
            # some writers (safetensors among them) create files 0600; outputs get the usual mode
            os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(final.parent)


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``final``; put it in ``final``'s place if the block succeeds.

    The folder analogue of :func:`atomic_path`: readers see the old folder or the complete new one,
    never a half-written mix. An existing ``final`` is moved aside first and deleted only after the
    new folder is in place (callers decide whether replacing it is allowed); on any exception the
    temporary folder is removed and the old one, if moved, is put back.
    """
    final = Path(final)
    token = secrets.token_hex(4)
    tmp = final.with_name(f".{final.name}.tmp-{token}")
    aside = final.with_name(f".{final.name}.old-{token}")
    tmp.mkdir()
    moved_aside = False
    try:
        yield tmp
        for child in tmp.iterdir():
            fsync_file(child)
            with contextlib.suppress(OSError):
                os.chmod(child, 0o666 & ~_current_umask())
        with contextlib.suppress(OSError):
            os.chmod(tmp, 0o777 & ~_current_umask())
        fsync_dir(tmp)
        if final.exists():
            os.replace(final, aside)
            moved_aside = True
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if moved_aside and not final.exists():
            with contextlib.suppress(OSError):
                os.replace(aside, final)
        raise
    fsync_dir(final.parent)
    if moved_aside:
        shutil.rmtree(aside, ignore_errors=True)


def fsync_file(path: Path) -> None:
    """Flush a file's data to the disk before it is renamed into place.

    Without this a crash shortly after the rename can leave an empty file under the final name.
    A file system that cannot sync (EINVAL) is fine; any other failure (ENOSPC and EIO surface
    here on network and delayed-allocation file systems) means the data may not be there, so the
    file must not replace the previous one: the error propagates.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EROFS):
            raise
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename) where the platform allows it; best effort."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
