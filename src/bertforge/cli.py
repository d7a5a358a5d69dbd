"""The `bertforge` command: one entry point, one subcommand per job.

Each job's flags come from its typed run config (dataclasses parsed by jsonargparse, with YAML
recipes through `--config recipe.yaml` and dotted overrides such as `--train.learning_rate`).
The reference recipes' command lines work unchanged: `bertforge.compat` rewrites their flags
before parsing, launcher flags (`--local_rank` of torch.distributed.launch, Intel's thread
pools) are taken out wherever they stand, and Intel's `launch_benchmark.py` command lines become
the bertforge command that does the same (`bertforge.compat.intel`). This module also reads the
launcher's environment (torchrun's RANK, LOCAL_RANK, WORLD_SIZE or mpirun's; see
`bertforge.train.launch`), sets up logging, and turns user errors into one clear message and
exit status 2, without a traceback: every unknown flag in one line with a "did you mean", a bad
value in one line, never a usage dump. `--help` is written from the run config alone
(`bertforge.cli_help`): it imports no torch.
"""

from __future__ import annotations

import errno
import importlib
import logging
import os
import shutil
import sys
import typing
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Sequence

from bertforge import cli_help
from bertforge.compat import alias_table, intel, rewrite_argv
from bertforge.compat import flags as refs
from bertforge.compat.argv import device_switch, stray_bool_value, suggestion, take_launcher_flags
from bertforge.errors import BertforgeError, ConfigError, DeviceError

log = logging.getLogger("bertforge")

FILESYSTEM_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS,
                     errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG}
HELP_FLAGS = {"-h", "--help", "--help-full", "--help-compat"}


@dataclass(frozen=True)
class Command:
    """A subcommand: its words, its line in the top help, its run config and its job."""

    path: tuple[str, ...]
    help: str
    config: str  # "module:Class": the run config, whose module --help imports (and nothing else)
    run: Callable[[Any], object]  # the job, given its config; imports the task when it is called
    positional: bool = False  # required fields are positional arguments (convert SRC DST)

    def config_class(self) -> type:
        return _load(self.config)


def _load(spec: str) -> Any:
    """`module:name` -> the object."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


# ---- the commands ------------------------------------------------------------------------------


_ARGV_LOCAL_RANK: list[int] = []  # a --local_rank that torch.distributed.launch put on the command line


def _dist_info():
    """This process's place in its launch, as torchrun's or an MPI launcher's environment says."""
    from bertforge.train.launch import DistInfo
    return DistInfo.from_env(os.environ, _ARGV_LOCAL_RANK[-1] if _ARGV_LOCAL_RANK else None)


def _call(spec: str) -> Callable[[Any], object]:
    """The job `spec(config)`."""
    return lambda cfg: _load(spec)(cfg)


def _distributed(spec: str) -> Callable[[Any], object]:
    """The job `spec(config, DistInfo)`, this process's place among torchrun's."""
    return lambda cfg: _load(spec)(cfg, _dist_info())


def _predict(job: str, raw_text: str) -> Callable[[Any], object]:
    """A prediction command: the task's job `job(config, DistInfo)` on its files, or, for text
    given on the command line or as JSON lines (`config.raw_text`), `raw_text(config)`, which
    predicts through the Python API."""
    files, text = _distributed(job), _call(raw_text)
    return lambda cfg: text(cfg) if cfg.raw_text else files(cfg)


def _prepare(cfg) -> None:
    import json

    from bertforge.data.pretraining import prepare_pretraining_data
    print(json.dumps(prepare_pretraining_data(cfg), indent=2, default=str))


def _serve(cfg) -> None:
    from bertforge.serve import serve
    serve(cfg, os.environ)  # --auth_token_env names a variable of the command's environment


def _download(dataset: str) -> Callable[[Any], object]:
    def run(cfg):
        from bertforge import download
        download.download(dataset, cfg, default_cache_dir() if cfg.cache_dir is None else Path(cfg.cache_dir))
    return run


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/bertforge, else ~/.cache/bertforge (the XDG base directory convention)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bertforge"


_TASKS = "bertforge.tasks.config"
_RAW_TEXT = "bertforge.raw_text:"
COMMANDS = [
    Command(("finetune", "squad"), "fine-tune on SQuAD v1.1, then predict and evaluate", f"{_TASKS}:SquadRun",
            _distributed("bertforge.tasks.squad:finetune")),
    Command(("finetune", "glue"), "fine-tune on a GLUE task, evaluate, write submissions", f"{_TASKS}:GlueRun",
            _distributed("bertforge.tasks.glue:finetune")),
    Command(("predict", "squad"), "predict SQuAD answers with a fine-tuned checkpoint",
            f"{_TASKS}:SquadPredictRun", _predict("bertforge.tasks.squad:predict_run", _RAW_TEXT + "answer_run")),
    Command(("predict", "glue"), "write GLUE test-set submission files", f"{_TASKS}:GluePredictRun",
            _predict("bertforge.tasks.glue:evaluate_run", _RAW_TEXT + "classify_run")),
    Command(("evaluate", "squad"), "official SQuAD v1.1 EM/F1 of a predictions file", f"{_TASKS}:EvaluateArgs",
            _call("bertforge.tasks.squad:evaluate_files"), positional=True),
    Command(("evaluate", "glue"), "GLUE dev-set metrics of a fine-tuned checkpoint", f"{_TASKS}:GlueEvaluateRun",
            _predict("bertforge.tasks.glue:evaluate_run", _RAW_TEXT + "classify_run")),
    Command(("pretrain",), "pretrain BERT (MLM + NSP, LAMB) from prepared shards", f"{_TASKS}:PretrainRun",
            _distributed("bertforge.tasks.pretraining:pretrain")),
    Command(("prepare", "pretraining"), "turn raw text into pretraining shards",
            "bertforge.data.pretraining.config:PrepareConfig", _prepare),
    Command(("convert",), "convert a checkpoint (Google TF, HF, NVIDIA DLE, bertforge) to HF or bertforge",
            "bertforge.checkpoint.args:ConvertArgs", _call("bertforge.checkpoint.commands:convert"),
            positional=True),
    Command(("info",), "print a checkpoint's config, parameter count and dtype",
            "bertforge.checkpoint.args:InfoArgs", _call("bertforge.checkpoint.commands:info"), positional=True),
    Command(("benchmark",), "measure training/inference speed (optionally against Hugging Face)",
            "bertforge.bench.config:BenchmarkArgs", _distributed("bertforge.bench:run_benchmark")),
    Command(("export",), "export a trained model to ONNX or torch.export for serving",
            "bertforge.export_args:ExportArgs", _call("bertforge.export:export"), positional=True),
    Command(("download", "squad"), "download SQuAD v1.1 into a cache directory, checksums verified",
            "bertforge.download:DownloadSquadArgs", _download("squad")),
    Command(("download", "glue"), "download GLUE tasks into a cache directory, checksums verified",
            "bertforge.download:DownloadGlueArgs", _download("glue")),
    Command(("plot",), "plot training curves of runs (loss, lr, seq/s, eval metrics) into a PNG",
            "bertforge.plot:PlotArgs", _call("bertforge.plot:plot"), positional=True),
    Command(("serve",), "serve a model's answer/classify/encode over HTTP and JSON, batching requests",
            "bertforge.serve.config:ServeArgs", _serve, positional=True),
]


# ---- help --------------------------------------------------------------------------------------


def command_help(command: Command, asked: set[str]) -> str:
    """The help asked for: --help-compat's, else --help-full's, else --help's."""
    name, cls = " ".join(command.path), command.config_class()
    width = max(60, min(shutil.get_terminal_size().columns, 120) - 2)
    if "--help-compat" in asked:
        return cli_help.compat_help(name, cls, width)
    return cli_help.command_help(name, command.help, cls, command.positional, width, full="--help-full" in asked)


def _no_command(argv: list[str]) -> int:
    """A command group without its task (`bertforge finetune`) lists its tasks; anything else
    is an unknown command."""
    group = argv[0] if argv else ""
    tasks = [(c.path[1], c.help) for c in COMMANDS if len(c.path) == 2 and c.path[0] == group]
    if tasks and (len(argv) == 1 or argv[1].startswith("-")):
        if set(argv[1:]) <= HELP_FLAGS:
            print(cli_help.group_help(group, tasks))
            return 0
        print(f"bertforge {group}: give a task first (bertforge {group} <task> [flags]); tasks: "
              f"{', '.join(t for t, _ in tasks)}", file=sys.stderr)
        return 2
    known = [" ".join(c.path) for c in COMMANDS]
    words = [a for a in argv if not a.startswith("-")]
    print(f"bertforge: unknown command {' '.join(words[:2])!r}; commands: {', '.join(known)}", file=sys.stderr)
    return 2


# ---- parsing and dispatch ----------------------------------------------------------------------


def find_command(argv: Sequence[str]) -> tuple[Command | None, list[str]]:
    """The command argv names, and the rest of argv (launcher flags already taken out)."""
    argv = list(argv)
    words = []
    for token in argv:
        if token.startswith("-"):
            break
        words.append(token)
    for c in COMMANDS:
        if tuple(words[:len(c.path)]) == c.path:
            return c, argv[len(c.path):]
    return None, argv


def _build_parser(command: Command, cls: type):
    """The parser of `command`'s flags (its help is cli_help's, not this parser's)."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    # No prefix matching: --mode must not be taken for --model. Errors come back as exceptions
    # so that main() reports them in one line.
    parser = ArgumentParser(prog="bertforge " + " ".join(command.path), description=command.help,
                            exit_on_error=False, allow_abbrev=False)
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML recipe (see configs/)")
    # A required list field takes one or more positional words (plot RUN [RUN ...]); jsonargparse
    # would take a single JSON list there.
    hints = typing.get_type_hints(cls)
    variadic = [f.name for f in fields(cls) if command.positional and f.default is MISSING
                and f.default_factory is MISSING and typing.get_origin(hints[f.name]) is list]
    parser.add_class_arguments(cls, None, as_positional=command.positional, skip=set(variadic))
    for name in variadic:
        parser.add_argument(name, nargs="+")
    return parser


def _instantiate(parser, ns, cls: type):
    init = parser.instantiate(ns)
    values = {f.name: init[f.name] for f in fields(cls)}
    return cls(**values)


def setup_logging(rank: int, world_size: int = 1) -> None:
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s"
                        if world_size > 1 else "%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def _set_threads(threads: dict[str, int]) -> None:
    import torch

    if threads.get("intra", 0) > 0:
        torch.set_num_threads(threads["intra"])
    if threads.get("inter", 0) > 0:
        try:
            torch.set_num_interop_threads(threads["inter"])
        except RuntimeError:  # already set in this process (tests call main repeatedly)
            log.warning("--inter_op_parallelism_threads: torch's inter-op pool was already started")


def unknown_flags(argv: Sequence[str], parser, flat_names: Sequence[str] = ()) -> list[str]:
    """Every --flag the parser does not know, each with a suggestion when one is close (among
    its flags and the flat names that stand for them)."""
    import difflib

    known = {s for action in parser._actions for s in action.option_strings if s.startswith("--")}
    candidates = sorted(known | {f"--{n}" for n in flat_names})
    problems = []
    for token in argv:
        if not token.startswith("--") or token == "--":
            continue
        flag = token.partition("=")[0]
        if flag in known or any(flag.startswith(k + ".") for k in known):
            continue
        close = suggestion(flag) or next(iter(difflib.get_close_matches(flag, candidates, n=1, cutoff=0.75)), None)
        problems.append(f"{flag} (did you mean {close}?)" if close else flag)
    return problems


def parse_command(command: Command, argv: Sequence[str]):
    """The run config of `command` from its flags (reference spellings rewritten, their notes
    logged); returns (config, handler, namespace): `handler(config)` runs the job. ConfigError
    names every unknown flag, or the first bad value, in one line."""
    from jsonargparse import ArgumentError

    name = " ".join(command.path)
    cls = command.config_class()
    parser = _build_parser(command, cls)
    aliases = alias_table(cls)
    rewritten = rewrite_argv(argv, aliases)
    bad = unknown_flags(rewritten.argv, parser, list(aliases))
    if bad:
        raise ConfigError(f"unknown flag{'s' if len(bad) > 1 else ''}: {', '.join(bad)} "
                          f"(bertforge {name} --help lists the flags)")
    if rewritten.notes:
        log.warning("reference flags with another meaning here:\n  %s", "\n  ".join(rewritten.notes))
    try:
        ns = parser.parse_args(rewritten.argv)
    except ArgumentError as e:
        message = " ".join(str(e).split())
        left = message.removeprefix("unrecognized arguments: ").split() if "unrecognized arguments" in message else []
        stray = next(filter(None, (stray_bool_value(argv, aliases, word) for word in left)), None)
        raise ConfigError(stray or f"{message} (bertforge {name} --help lists the flags)") from None
    return _instantiate(parser, ns, cls), command.run, ns


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command `argv` (default: the process's arguments); returns the exit status."""
    try:
        status = _main(argv)
        sys.stdout.flush()  # a reader that went away shows here, not as a traceback at exit
        return status
    except BrokenPipeError:
        # `bertforge ... --help | head`: the reader closed the pipe. Stop quietly, with the status
        # of a command ended by SIGPIPE (128 + 13); output still buffered goes to /dev/null, where
        # the interpreter's last flush cannot fail.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(cli_help.top_help([(" ".join(c.path), c.help) for c in COMMANDS]))
        return 0
    if argv[0] == "--version":
        from bertforge import __version__
        print(f"bertforge {__version__}")
        return 0
    try:
        if argv[0] in intel.COMMAND_NAMES and HELP_FLAGS.intersection(argv[1:]):
            print(cli_help.launch_benchmark_help())
            return 0
        if argv[0] in intel.COMMAND_NAMES:
            argv = _launch_benchmark(argv[1:])
            if argv is None:
                return 2
        argv, local_rank, threads = take_launcher_flags(argv)
    except BertforgeError as e:
        print(f"bertforge: error: {e}", file=sys.stderr)
        return 2
    if local_rank is not None:
        _ARGV_LOCAL_RANK.append(local_rank)
    command, rest = find_command(argv)
    if command is None:
        return _no_command(argv)
    asked = HELP_FLAGS.intersection(rest[:rest.index("--")] if "--" in rest else rest)
    if asked:
        print(command_help(command, asked))
        return 0
    name = " ".join(command.path)
    try:
        dist = _dist_info()
    except BertforgeError as e:
        print(f"bertforge {name}: error: {e}", file=sys.stderr)
        return 2
    setup_logging(dist.rank, dist.world_size)
    if not sys.stderr.isatty():
        # Progress bars in a log file: one line every 30 s, not one per update.
        os.environ.setdefault("TQDM_MININTERVAL", "30")
    for variable in refs.VENDOR_ENVIRONMENT.keys() & os.environ.keys():
        log.warning("%s=%s: %s", variable, os.environ[variable], refs.VENDOR_ENVIRONMENT[variable])
    try:
        cfg, handler, _ = parse_command(command, rest)
        _set_threads(threads)
        handler(cfg)
    except DeviceError as e:
        switch = device_switch(rest)
        print(f"bertforge {name}: error: " + (f"--{switch[0]}: no {switch[1].upper()} here; drop it or use "
                                              f"--device cpu" if switch else str(e)), file=sys.stderr)
        return 2
    except BertforgeError as e:
        print(f"bertforge {name}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        # Disk full, quota, permissions, read-only file systems met while writing results:
        # one line naming the file, not a traceback.
        if e.errno not in FILESYSTEM_ERRNOS:
            raise
        from bertforge.fileio import describe_os_error

        where = f" {e.filename}:" if e.filename else ""
        print(f"bertforge {name}: error:{where} {describe_os_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def _launch_benchmark(argv: list[str]) -> list[str] | None:
    """Intel's launch_benchmark.py command line: the bertforge command that does the same (said
    on stderr with the notes); None, after printing it, when it must run under torchrun."""
    translated = intel.launch_benchmark(argv)
    for note in translated.notes:
        print(f"bertforge launch_benchmark: {note}", file=sys.stderr)
    if translated.processes > 1:
        print(f"bertforge launch_benchmark: error: --mpi_num_processes {translated.processes}: bertforge's "
              f"processes are started by torchrun: {translated.command_line()}", file=sys.stderr)
        return None
    print(f"bertforge launch_benchmark: running {translated.command_line()}", file=sys.stderr)
    return translated.command


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
