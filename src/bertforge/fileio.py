"""Reading JSON with errors that name the file and the line, and writing files atomically.

Atomic writes go to a temporary file in the same directory, are flushed to disk, and are then
renamed over the target: a crash leaves the old file or the new one, never half of one. A write
that fails (a full disk, a quota, a read-only file system) removes its temporary file and raises
`WriteError` naming the path, the space the write needed where known, and the space left.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

from safetensors import SafetensorError

from bertforge.errors import BertforgeError, DataError, WriteError

# How the writers bertforge calls report a failed write: OSError (Python's own files, numpy),
# RuntimeError (torch.save's C++ stream writer: "enforce fail at inline_container.cc"),
# SafetensorError (safetensors' Rust writer: "IoError(Os { code: 28, kind: StorageFull ...})").
WRITE_FAILURES = (OSError, RuntimeError, SafetensorError)


def read_json(path: str | Path, what: str = "JSON file",
              error: type[BertforgeError] = DataError) -> Any:
    """Parse a JSON file; a missing, non-UTF-8 or malformed file raises `error`. A leading
    UTF-8 byte-order mark (which Windows editors write) is skipped, as RFC 8259 allows."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} not found: {path}")
    try:
        with path.open(encoding="utf-8-sig") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise error(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    except RecursionError:
        raise error(f"{path}: JSON nested too deeply to read (thousands of levels of [ or {{); "
                    "is it the file you meant?") from None


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None], needed: int | None = None) -> Path:
    """Call `write(f)` on a temporary binary file beside `path`, fsync it, rename it to `path`.
    `needed` (bytes, when known) goes into the message of a failed write."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise write_error(path, e, needed) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_file_mode())  # mkstemp makes files private (0600); results are not
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, WRITE_FAILURES):
            raise write_error(path, e, needed) from None
        raise
    fsync_directory(path.parent)
    return path


def fsync_directory(directory: str | Path) -> None:
    """Make the renames into `directory` durable (best effort: not every platform can)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def default_file_mode() -> int:
    """The mode open() would give a new file: 0666 less the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_text(path: str | Path, text: str) -> Path:
    data = text.encode("utf-8")
    return atomic_write(path, lambda f: f.write(data), needed=len(data))


def atomic_write_json(path: str | Path, data: Any, indent: int = 2) -> Path:
    """Strict JSON (non-finite numbers as null), written atomically."""
    return atomic_write_text(path, json.dumps(json_safe(data), indent=indent, ensure_ascii=False,
                                              allow_nan=False) + "\n")


def json_safe(value: Any) -> Any:
    """NaN/inf (a diverged loss, an undefined correlation) become null: strict JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


_REASONS = {errno.EACCES: "permission denied", errno.EPERM: "permission denied",
            errno.ENOTDIR: "a file is in the way where a directory should be",
            errno.EEXIST: "a file is in the way where a directory should be",
            errno.ENOSPC: "no space left on the device", errno.EROFS: "read-only file system",
            errno.EFBIG: "file too large for the file system", errno.EDQUOT: "disk quota exceeded",
            errno.EISDIR: "is a directory", errno.ENAMETOOLONG: "file name too long"}


def describe_os_error(e: OSError) -> str:
    """A filesystem error in words, for one-line messages."""
    return _REASONS.get(e.errno, e.strerror or str(e))


# What safetensors (Rust) and torch.save (C++) write in place of an errno.
_MESSAGE_ERRNOS = (("No space left", errno.ENOSPC), ("StorageFull", errno.ENOSPC), ("os error 28", errno.ENOSPC),
                   ("quota exceeded", errno.EDQUOT), ("os error 122", errno.EDQUOT),
                   ("Read-only file system", errno.EROFS), ("os error 30", errno.EROFS),
                   ("Permission denied", errno.EACCES), ("os error 13", errno.EACCES),
                   ("File too large", errno.EFBIG), ("os error 27", errno.EFBIG))
_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def free_space(path: str | Path) -> int | None:
    """Bytes this process may still write on the file system holding `path` (or the nearest of
    its ancestors that exists); None when that cannot be told."""
    path = Path(path).absolute()
    for candidate in (path, *path.parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free
            except OSError:
                return None
    return None


def human_bytes(n: float) -> str:
    units = ("bytes", "KiB", "MiB", "GiB", "TiB")
    i = 0
    while n >= 1024 and i < len(units) - 1:
        n, i = n / 1024, i + 1
    return f"{n:.0f} bytes" if i == 0 else f"{n:.1f} {units[i]}"


def write_error(path: str | Path, e: BaseException, needed: int | None = None) -> WriteError:
    """A failed write as one line: the path, what went wrong, and the space the write needed
    (when known) and had. `e` is what the writer raised (an OSError, torch.save's RuntimeError,
    a SafetensorError); the reason is read from its errno or, for the last two, its text."""
    text = str(e)
    code = e.errno if isinstance(e, OSError) else next((c for t, c in _MESSAGE_ERRNOS if t in text), None)
    free = free_space(path)
    if code is None and needed is not None and free is not None and free < needed:
        code = errno.ENOSPC
    if code is not None:
        reason = _REASONS.get(code) or (e.strerror if isinstance(e, OSError) and e.strerror else os.strerror(code))
    else:
        first = text.strip().splitlines()[0][:200] if text.strip() else type(e).__name__
        reason = f"the write failed ({first}); is the disk full or the quota exceeded?"
    space = [f"{human_bytes(needed)} needed"] if needed is not None else []
    if free is not None and (code is None or code in _SPACE_ERRNOS):
        space.append(f"{human_bytes(free)} free")
    return WriteError(f"cannot write {path}: {reason}" + (f" ({', '.join(space)})" if space else ""))


def check_free_space(path: str | Path, needed: int, what: str) -> None:
    """WriteError before any work when the file system holding `path` has less than `needed`
    bytes free for `what`."""
    free = free_space(path)
    if free is not None and free < needed:
        raise WriteError(f"cannot write {what} to {path}: {human_bytes(needed)} needed, "
                         f"{human_bytes(free)} free; free some space or choose another directory")


def ensure_parent_dir(path: str | Path, what: str) -> Path:
    """Create the directory `path` goes into, before any work; ConfigError naming `what` and the
    path when it cannot be (a file in the way, no permission, read-only)."""
    from bertforge.errors import ConfigError

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot write {what} {path}: {describe_os_error(e)}") from None
    if path.is_dir():
        raise ConfigError(f"cannot write {what} {path}: it is a directory")
    return path
