"""Reading JSON with errors that name the file and the line, and writing files atomically.

Atomic writes go to a temporary file in the same directory, are flushed to disk, and are then
renamed over the target: a crash leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

from bertforge.errors import BertforgeError, DataError


def read_json(path: str | Path, what: str = "JSON file",
              error: type[BertforgeError] = DataError) -> Any:
    """Parse a JSON file; a missing, non-UTF-8 or malformed file raises `error`."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} not found: {path}")
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise error(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    except RecursionError:
        raise error(f"{path}: JSON nested too deeply to read (thousands of levels of [ or {{); "
                    "is it the file you meant?") from None


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call `write(f)` on a temporary binary file beside `path`, fsync it, rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_file_mode())  # mkstemp makes files private (0600); results are not
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def default_file_mode() -> int:
    """The mode open() would give a new file: 0666 less the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


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
