"""A run's output directory: one run at a time, never mixed with another run, never losing
what a user made.

- A training run needs an empty (or new) directory. `--resume` continues the run already in
  it (its stored config must match in everything that shapes the result); `--overwrite_output_dir`
  replaces it, removing only files bertforge writes and refusing if anything else is there.
- A run that only predicts or evaluates may write into a directory that holds other things
  (typically the model's own run directory), but never over an earlier result file unless
  `--overwrite_output_dir` says so.
- A lock file (`.bertforge.lock`, an advisory flock held for the whole run, released by the
  kernel when the process dies) keeps two runs out of one directory at once; the second is told
  the first one's PID.
- The run's resolved config is written to `run_config.json` first thing.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import asdict, is_dataclass
from pathlib import Path

from bertforge.errors import ConfigError
from bertforge.fileio import atomic_write_json, describe_os_error, read_json

try:  # advisory locks are POSIX; elsewhere runs are not protected against each other
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

log = logging.getLogger(__name__)

LOCK = ".bertforge.lock"
RUN_CONFIG = "run_config.json"
# Everything a bertforge run can write into its output directory (besides task result files,
# which each job names), so --overwrite_output_dir knows what it may remove.
RUN_FILES = ("metrics.jsonl", RUN_CONFIG, "checkpoints", "model.safetensors", "config.json",
             "bertforge.json", "vocab.txt", "train_summary.json", LOCK)


def config_dict(cfg) -> dict:
    return asdict(cfg) if is_dataclass(cfg) else dict(cfg)


def _flatten(d: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[prefix + k] = v
    return flat


def os_error(e: OSError, path: Path, doing: str) -> ConfigError:
    """A filesystem error as one line naming the path."""
    return ConfigError(f"cannot {doing} {path}: {describe_os_error(e)}")


class OutputDir:
    """The output directory of one run; `check` before any work, `claim` once the process group
    is up (rank 0), `release` at the end."""

    def __init__(self, path: str | Path, *, training: bool, resume: bool, overwrite: bool,
                 result_files: tuple[str, ...] = (), inputs: tuple[str | None, ...] = ()):
        self.path = Path(path)
        self.training = training
        self.resume = resume
        self.overwrite = overwrite
        self.result_files = result_files
        self.inputs = [Path(p).resolve() for p in inputs if p]
        self._lock_fd: int | None = None

    # ---- before any work (every rank; reads only) ------------------------------------------

    def check(self) -> None:
        path = self.path
        if path.exists() and not path.is_dir():
            raise ConfigError(f"--output_dir {path} is a file, not a directory")
        ancestor = next((p for p in [path, *path.parents] if p.exists()), None)
        if ancestor is not None and not ancestor.is_dir():
            raise ConfigError(f"--output_dir {path}: {ancestor} is a file, not a directory")
        if ancestor is not None and not os.access(ancestor, os.W_OK | os.X_OK):
            raise ConfigError(f"--output_dir {path}: {ancestor} is not writable (permission denied)")
        if not path.is_dir():
            return
        present = sorted(p.name for p in path.iterdir() if p.name != LOCK)
        if self.training:
            if self.resume or not present:
                return
            if not self.overwrite:
                raise ConfigError(
                    f"--output_dir {path} is not empty ({_names(present)}): it holds another run. "
                    f"Continue that run with --resume, replace it with --overwrite_output_dir, or "
                    f"choose a new --output_dir")
            self._check_overwritable(present)
            return
        clash = [name for name in self.result_files if (path / name).exists()]
        if clash and not self.overwrite:
            raise ConfigError(f"--output_dir {path} already holds {_names(clash)} from an earlier run; "
                              f"pass --overwrite_output_dir to replace them, or choose another --output_dir")

    def _check_overwritable(self, present: list[str]) -> None:
        foreign = [n for n in present if n not in RUN_FILES and n not in self.result_files
                   and not n.endswith("_problems.json")]
        if foreign:
            raise ConfigError(f"--overwrite_output_dir: {self.path} also holds {_names(foreign)}, which "
                              f"bertforge did not write; move them away or choose another --output_dir")
        inside = [p for p in self.inputs if p == self.path.resolve() or self.path.resolve() in p.parents]
        if inside:
            raise ConfigError(f"--overwrite_output_dir would delete {inside[0]}, an input of this run; "
                              f"choose another --output_dir")

    # ---- claiming (rank 0) -----------------------------------------------------------------

    def claim(self, config: dict) -> None:
        """Create the directory, take the lock, clear an overwritten run, write run_config.json;
        on resume, check the stored config against this one."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock()
        except OSError as e:
            raise os_error(e, self.path, "write into") from None
        if self.training and self.overwrite and not self.resume:
            self._clear()
        stored = self.path / RUN_CONFIG
        if self.training and self.resume and stored.is_file():
            check_resumable(read_json(stored, "run config", ConfigError), config, stored)
        if self.training or not stored.exists():
            atomic_write_json(stored, config)

    def _lock(self) -> None:
        if fcntl is None:
            return
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(f"--output_dir {self.path} is in use by another bertforge run (PID {holder}); "
                              f"wait for it to finish or choose another --output_dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _clear(self) -> None:
        removed = []
        for p in sorted(self.path.iterdir()):
            if p.name == LOCK:
                continue
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            removed.append(p.name)
        if removed:
            log.warning("--overwrite_output_dir: removed the earlier run's %s from %s", _names(removed), self.path)

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # the lock file stays; the lock itself is gone
            self._lock_fd = None


# What may differ when a run is resumed: how long it runs and how it reports; where it is kept
# (a run directory may be moved); where and how fast it computes. Anything else (model, data, optimizer, batch, seed) would make it another run.
RESUME_MAY_CHANGE = ("output_dir", "train.max_steps", "train.num_train_epochs", "train.log_every", "train.save_every",
                     "train.keep_checkpoints", "train.resume", "train.max_fp16_skips", "runtime.",
                     "overwrite_output_dir", "do_predict", "do_eval", "data.predict_", "data.eval_",
                     "data.max_eval_samples", "data.n_best_size", "data.max_answer_length")


def check_resumable(stored: dict, current: dict, source: Path) -> None:
    a, b = _flatten(stored), _flatten(current)
    changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    blocking = [k for k in changed if not k.startswith(RESUME_MAY_CHANGE)]
    if blocking:
        shown = "; ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in blocking[:6])
        raise ConfigError(f"cannot resume: this command differs from the run in {source.parent} ({shown}"
                          f"{' ...' if len(blocking) > 6 else ''}); resume with the same settings, or "
                          f"start a new run in another --output_dir")
    if changed:
        log.info("resuming with changed settings: %s", ", ".join(changed))


def _names(names: list[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
