"""One writer per output folder: a lock file naming its owner, refused while the owner lives.

``pace train`` takes the lock of its output folder before it reads or writes anything there, so a
second run started into the same folder stops at once with a message naming the first, instead
of two runs interleaving checkpoints and metrics. The lock file holds the owner's process id,
host name and process start time. A run that crashed (or was killed with SIGKILL) cannot remove
its lock; the next run finds the owner gone and takes the lock over, so a crash never leaves a
folder stuck. A lock held from another host cannot be checked from here and is refused with a
message saying which file to delete if that run is really gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from pace_cli.errors import PaceError
from pace_cli.files.layout import LOCK_FILE


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux), so a recycled process id is not taken for the owner."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: count fields after the last ')'
    return stat.rpartition(")")[2].split()[19]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def _owner_record() -> dict:
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "start": _start_time(pid),
            "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def _read(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("pid"), int) else None


def _is_stale(record: dict | None) -> bool:
    """True when the owner is certainly gone: same host and its process is dead or is another process."""
    if record is None:
        return True  # unreadable and not fresh (checked by the caller): a crash while it was being written
    if record.get("host") != socket.gethostname():
        return False
    pid = record["pid"]
    if not _alive(pid):
        return True
    started = record.get("start")
    return started is not None and _start_time(pid) not in (None, started)


# An empty or unreadable lock this young may be one another run is writing right now.
_FRESH_S = 10.0


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return float("inf")


def _create(path: Path, record: dict) -> bool:
    """Create the lock file atomically; False when it already exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, (json.dumps(record) + "\n").encode("utf-8"))
    except OSError:
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    os.close(fd)
    return True


@contextlib.contextmanager
def output_lock(folder: str | Path) -> Iterator[Path]:
    """Hold ``folder``'s lock for the block; refuse with a PaceError while a live run holds it.

    The folder is created if needed, and removed again on exit if this call created it and it
    is still empty, so a run refused for a bad input leaves nothing behind.
    """
    folder = Path(folder)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PaceError(e.strerror or str(e), where=f"cannot create output folder '{folder}'") from None
    path = folder / LOCK_FILE
    record = _owner_record()
    try:
        for _ in range(3):  # a stale lock is removed and creation retried; a racing run may win it
            if _create(path, record):
                break
            holder = _read(path)
            if not _is_stale(holder) or (holder is None and _age(path) < _FRESH_S):
                raise _busy(folder, path, holder)
            _remove_stale(path, holder)
        else:
            raise _busy(folder, path, _read(path))
    except BaseException as e:
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        if isinstance(e, OSError):
            raise PaceError(e.strerror or str(e), where=f"cannot lock output folder '{folder}' ({path.name})") from None
        raise
    try:
        yield path
    finally:
        if (_read(path) or {}).get("pid") == record["pid"]:
            with contextlib.suppress(OSError):
                path.unlink()
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only succeeds when empty


def _remove_stale(path: Path, judged: dict | None) -> None:
    """Move the stale lock aside and delete it, unless another run replaced it since it was judged.

    Two runs may find the same stale lock; the first takes it over, and the second must not
    delete the first's fresh lock. Renaming is atomic, so what was moved aside is checked.
    """
    aside = path.with_name(f"{path.name}.stale-{os.getpid()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return  # someone else removed it: just try to create ours
    moved = _read(aside)
    if moved != judged and moved is not None:  # a live lock taken in between: put it back
        with contextlib.suppress(OSError):
            os.link(aside, path)
    with contextlib.suppress(OSError):
        aside.unlink()


def _busy(folder: Path, path: Path, holder: dict | None) -> PaceError:
    if holder is None:
        return PaceError(f"output folder '{folder}' is being locked by another pace run right now",
                         remedy="wait for it or use another --output-dir")
    who = f"pid {holder['pid']} on {holder.get('host', '?')}, since {holder.get('since', '?')}"
    remedy = "wait for it to finish or use another --output-dir"
    if holder.get("host") != socket.gethostname():  # its pid cannot be checked from here
        remedy += f" (if that run is gone, delete {path})"
    return PaceError(f"output folder '{folder}' is in use by another pace run ({who})", remedy=remedy)
