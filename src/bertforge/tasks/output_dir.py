"""A run's output directory: one run at a time, never mixed with another run, never losing
what a user made.

- A training run needs an empty (or new) directory. `--resume` continues the run already in
  it (its stored config must match in everything that shapes the result); `--overwrite_output_dir`
  replaces it, refusing if anything there is not a file bertforge writes or is an input of the
  new run. The earlier run is not deleted at once: it is moved into `.replaced-<time>/` and
  deleted when the new run has written its first checkpoint, its model or a result. A run that
  fails before that puts it back.
- A run that only predicts or evaluates may write into a directory that holds other things
  (typically the model's own run directory), but never over an earlier result file unless
  `--overwrite_output_dir` says so.
- A lock file (`.bertforge.lock`, an advisory flock held for the whole run, released by the
  kernel when the process dies, removed when the run ends) keeps two runs out of one directory
  at once; the second is told the first one's PID.
- The run's resolved config is written to `run_config.json` once every input has been checked.
  A run refused after that leaves nothing behind: a directory that holds only a `run_config.json`
  is a refused run's and counts as empty.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import MISSING, asdict, fields, is_dataclass
from pathlib import Path

from bertforge.errors import ConfigError
from bertforge.fileio import atomic_write, atomic_write_json, describe_os_error, read_json
from bertforge.train.checkpoints import STEP_DIR, checkpoint_root

try:  # advisory locks are POSIX; elsewhere runs are not protected against each other
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

log = logging.getLogger(__name__)

LOCK = ".bertforge.lock"
RUN_CONFIG = "run_config.json"
REPLACED = ".replaced-"  # + the time: an earlier run that --overwrite_output_dir is replacing
MODEL = "model.safetensors"
# Everything a bertforge run can write into its output directory (besides task result files,
# which each job names), so --overwrite_output_dir knows what it may remove.
RUN_FILES = ("metrics.jsonl", RUN_CONFIG, "checkpoints", MODEL, "config.json",
             "bertforge.json", "vocab.txt", "train_summary.json", LOCK,
             "best", "tensorboard", "wandb")  # --save_best's weights, the trackers' files
# What makes a training run worth keeping: a resumable checkpoint, its model, its summary.
PRODUCTS = (MODEL, "train_summary.json")


def config_dict(cfg) -> dict:
    return asdict(cfg) if is_dataclass(cfg) else dict(cfg)


def config_defaults(cls: type) -> dict:
    """The flattened default of every field of a (nested) run-config dataclass: what a run
    recorded before a field existed behaved as (see check_resumable)."""
    flat = {}
    for f in fields(cls):
        if f.default is not MISSING:
            value = f.default
        elif f.default_factory is not MISSING:
            value = f.default_factory()
        else:
            continue
        flat.update(_flatten(asdict(value), f"{f.name}.") if is_dataclass(value) else {f.name: value})
    return flat


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
    """The output directory of one run; `check` before any work, `claim` once every input has
    been checked and the process group is up (rank 0), then `commit` when the run has made
    something (or `abandon` when it fails), and `release` at the end."""

    def __init__(self, path: str | Path, *, training: bool, resume: bool, overwrite: bool,
                 result_files: tuple[str, ...] = (), inputs: tuple[str | Path | None, ...] = ()):
        self.path = Path(path)
        self.training = training
        self.resume = resume
        self.overwrite = overwrite
        self.result_files = result_files
        self.inputs = [Path(p).resolve() for p in inputs if p]
        self._lock_fd: int | None = None
        self._created = False  # claim made the directory
        self._before: set[str] = set()  # what was there when claimed (the earlier run moved out)
        self._checkpoints_before: set[str] = set()  # the checkpoints there when claimed
        self._stored_config: bytes | None = None  # run_config.json as a resumed run found it
        self.replaced: Path | None = None  # where the earlier run waits until this one has made something

    # ---- before any work (every rank; reads only) ------------------------------------------

    def check(self) -> None:
        path = self.path
        if path.exists() and not path.is_dir():
            raise ConfigError(f"--output_dir {path} is a file, not a directory")
        ancestor = next((p for p in [path, *path.parents] if p.exists()), None)
        if ancestor is not None and not ancestor.is_dir():
            raise ConfigError(f"--output_dir {path}: {ancestor} is a file, not a directory")
        if ancestor is not None and _read_only(ancestor):
            raise ConfigError(f"--output_dir {path}: {ancestor} is on a read-only file system")
        if ancestor is not None and not os.access(ancestor, os.W_OK | os.X_OK):
            raise ConfigError(f"--output_dir {path}: {ancestor} is not writable (permission denied)")
        if not path.is_dir():
            return
        present = sorted(p.name for p in path.iterdir() if p.name != LOCK)
        if self.training:
            if self.resume or present in ([], [RUN_CONFIG]):  # empty, or a refused run's config
                return
            if not self.overwrite:
                interrupted = [n for n in present if n.startswith(REPLACED)]
                raise ConfigError(
                    f"--output_dir {path} is not empty ({_names(present)}): it holds another run. "
                    f"Continue that run with --resume, replace it with --overwrite_output_dir, or "
                    f"choose a new --output_dir"
                    + (f". {interrupted[0]} holds a run an interrupted --overwrite_output_dir was "
                       f"replacing: move its files back to keep it" if interrupted else ""))
            self._check_overwritable(present)
            return
        clash = [name for name in self.result_files if (path / name).exists()]
        if clash and not self.overwrite:
            raise ConfigError(f"--output_dir {path} already holds {_names(clash)} from an earlier run; "
                              f"pass --overwrite_output_dir to replace them, or choose another --output_dir")

    def _check_overwritable(self, present: list[str]) -> None:
        root = self.path.resolve()
        inside = [p for p in self.inputs if p == root or root in p.parents]
        if inside:
            raise ConfigError(f"--overwrite_output_dir would delete {inside[0]}, an input of this run; "
                              f"move it out of {self.path} or choose another --output_dir")
        foreign = [n for n in present if n not in RUN_FILES and n not in self.result_files
                   and not n.endswith("_problems.json") and not n.startswith(REPLACED)]
        if foreign:
            raise ConfigError(f"--overwrite_output_dir: {self.path} also holds {_names(foreign)}, which "
                              f"bertforge did not write; move them away or choose another --output_dir")

    # ---- claiming (rank 0) -----------------------------------------------------------------

    def claim(self, config: dict, defaults: dict | None = None) -> None:
        """Create the directory, take the lock, move an overwritten run aside, write
        run_config.json; on resume, check the stored config against this one (`defaults`: see
        check_resumable)."""
        try:
            self._created = not self.path.exists()
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock()
            if self.training and not self.resume:
                if self._before == {RUN_CONFIG}:
                    self._before = set()  # a refused run's config: this run's replaces it
                if self.overwrite:
                    self._move_aside()
        except OSError as e:
            raise os_error(e, self.path, "write into") from None
        stored = self.path / RUN_CONFIG
        if self.training and self.resume and stored.is_file():
            check_resumable(read_json(stored, "run config", ConfigError), config, stored, defaults)
            self._stored_config = stored.read_bytes()
        self._checkpoints_before = set(self._checkpoints())
        if self.training or not stored.exists():
            atomic_write_json(stored, config)

    def _lock(self) -> None:
        if fcntl is None:
            return
        while True:
            fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise ConfigError(f"--output_dir {self.path} is in use by another bertforge run (PID {holder}); "
                                  f"wait for it to finish or choose another --output_dir") from None
            # The run that held the lock may have removed the file between our open and our
            # lock: then the lock is on a file nobody else will open. Take the one now there.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path / LOCK))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd
        self._before = {p.name for p in self.path.iterdir() if p.name != LOCK}

    def _move_aside(self) -> None:
        earlier = sorted(self._before)
        if not earlier:
            return
        self.replaced = self.path / f"{REPLACED}{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        self.replaced.mkdir()
        for name in earlier:
            os.replace(self.path / name, self.replaced / name)
        self._before = set()
        log.warning("--overwrite_output_dir: the earlier run's %s moved into %s; it is deleted once this "
                    "run has written a checkpoint, its model or a result, and put back if it fails before",
                    _names(earlier), self.replaced)

    # ---- the end of the run (rank 0) -------------------------------------------------------

    def made_something(self) -> bool:
        """Whether this run has written what makes it worth keeping over the run it replaces: a
        checkpoint, its model, a summary or a result file."""
        if set(self._checkpoints()) - self._checkpoints_before:
            return True
        return any((self.path / name).exists() and name not in self._before
                   for name in (*PRODUCTS, *self.result_files))

    def _checkpoints(self) -> list[str]:
        root = checkpoint_root(self.path)
        return [p.name for p in root.iterdir() if STEP_DIR.match(p.name)] if root.is_dir() else []

    def commit(self) -> None:
        """This run has made something: delete the run it replaced."""
        if self.replaced is not None:
            shutil.rmtree(self.replaced, ignore_errors=True)
            log.info("--overwrite_output_dir: removed the replaced run (%s)", self.replaced.name)
            self.replaced = None

    def abandon(self) -> None:
        """The run failed. When it made something, that is kept (a checkpoint to resume from).
        Otherwise what it wrote goes: all of it when it replaced a run, which comes back; only
        its run_config.json when it had not started (a refused run is not another run); a
        resumed run's directory is left as the run found it."""
        if self._lock_fd is None:
            return  # never claimed: nothing written
        if self.made_something():
            self.commit()
            return
        mine = [p for p in self.path.iterdir()
                if p.name not in self._before and p.name != LOCK and p != self.replaced]
        if self.resume and self._stored_config is not None:  # the run it continued is left as it was
            atomic_write(self.path / RUN_CONFIG, lambda f: f.write(self._stored_config))
            mine = [p for p in mine if p.name != RUN_CONFIG]
        elif self.replaced is None and any(p.name != RUN_CONFIG for p in mine):
            return  # it trained (metrics.jsonl): kept, to see why it failed
        for p in mine:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        if self.replaced is not None:
            for p in self.replaced.iterdir():
                os.replace(p, self.path / p.name)
            self.replaced.rmdir()
            log.warning("this run failed before writing anything to keep: the run it was replacing is "
                        "back in %s", self.path)
            self.replaced = None

    def release(self) -> None:
        """Remove the lock (and the directory, when claim made it and the run left it empty)."""
        if self._lock_fd is None:
            return
        (self.path / LOCK).unlink(missing_ok=True)  # still holding the lock: no run takes it between
        os.close(self._lock_fd)
        self._lock_fd = None
        if self._created and not any(self.path.iterdir()):
            self.path.rmdir()


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # statvfs is POSIX
        return False


# What may differ when a run is resumed: how long it runs and how it reports; where it is kept
# (a run directory may be moved); where and how fast it computes. Anything else (model, data, optimizer, batch, seed) would make it another run.
RESUME_MAY_CHANGE = ("output_dir", "train.max_steps", "train.num_train_epochs", "train.log_every", "train.save_every",
                     "train.keep_checkpoints", "train.resume", "train.max_fp16_skips", "train.report_to",
                     "evaluation.eval_every", "runtime.",
                     "overwrite_output_dir", "do_predict", "do_eval", "data.predict_", "data.eval_",
                     "data.max_eval_samples", "data.n_best_size", "data.max_answer_length")


def check_resumable(stored: dict, current: dict, source: Path, defaults: dict | None = None) -> None:
    """Refuse to resume a run whose stored config differs from this one in a setting that
    changes the training. A setting the stored config lacks (the run was written before the
    field existed) counts as unchanged where this run keeps the field's default (`defaults`,
    from config_defaults)."""
    a, b = _flatten(stored), _flatten(current)
    defaults = defaults or {}

    def differs(k: str) -> bool:
        if k not in a and k in defaults and b.get(k) == defaults[k]:
            return False
        return a.get(k) != b.get(k)

    # --resume itself is not a changed setting
    changed = sorted(k for k in a.keys() | b.keys() if differs(k) and k != "train.resume")
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
