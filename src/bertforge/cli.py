"""The `bertforge` command: one entry point, one subcommand per job.

Each job's flags come from its typed run config (dataclasses parsed by jsonargparse, with YAML
recipes through `--config recipe.yaml` and dotted overrides such as `--train.learning_rate`).
On top of that, this module (and only this module) makes the reference recipes' command lines
work unchanged:
- flat names: `--learning_rate` is `--train.learning_rate` (every field whose name is unique in
  the run config), plus the aliases in `ALIASES` (`--bert_config_file`, `--task`, ...);
- absl-style booleans as Google's scripts take them: `--do_train`, `--do_train=true`,
  `--nodo_lower_case`, `--no-compile`.
It also reads torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE), sets up logging, and turns
user errors into one clear message and exit status 2, without a traceback.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import types
import typing
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, Callable, Sequence

from bertforge.errors import BertforgeError

log = logging.getLogger("bertforge")

# Extra names for config fields (flat name -> field name, resolved like a flat name).
ALIASES = {
    "bert_config_file": "bert_model",
    "config_file": "bert_model",
    "task": "task_name",
    "predict_batch_size": "eval_batch_size",
    "num_steps_per_checkpoint": "save_every",
    "save_checkpoints_steps": "save_every",
    "log_freq": "log_every",
    "resume_from_checkpoint": "resume",
    "output_file": "output_dir",
}
# Reference-script switches that name a precision (NVIDIA: --fp16 / --amp / --bf16).
PRECISION_SWITCHES = {"fp16": "fp16", "amp": "fp16", "bf16": "bf16", "tf32": "tf32"}
# Reference flags that mean nothing here (TPU settings, NVIDIA's launcher and logging knobs):
# accepted with a warning, so existing command lines run.
IGNORED_FLAGS = {
    "use_tpu", "tpu_name", "tpu_zone", "gcp_project", "master", "num_tpu_cores", "iterations_per_loop",
    "verbose_logging", "allreduce_post_accumulation", "allreduce_post_accumulation_fp16", "json-summary",
    "disable_progress_bar", "skip_checkpoint", "local_rank", "cache_dir", "use_env", "eval_batch_size_tpu",
}
# Reference flags whose only supported value is the default; anything else is an error.
UNSUPPORTED = {"version_2_with_negative": ("false", "SQuAD 2.0 (unanswerable questions) is not supported")}
FILESYSTEM_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS,
                     errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG}
BOOL_WORDS = {"true", "false", "1", "0", "yes", "no", "t", "f", "y", "n"}


@dataclass
class Command:
    path: tuple[str, ...]
    help: str
    build: Callable[[], tuple[type, Callable[[Any, Any], int | None]]]  # -> (config class, handler)
    positional: bool = False  # required fields are positional arguments (convert SRC DST)


# ---- the commands ------------------------------------------------------------------------------


def _dist_info():
    from bertforge.train.runtime import DistInfo
    return DistInfo(rank=int(os.environ.get("RANK", 0)), local_rank=int(os.environ.get("LOCAL_RANK", 0)),
                    world_size=int(os.environ.get("WORLD_SIZE", 1)))


def _squad(mode: str):
    def build():
        from bertforge.tasks import squad
        if mode == "predict":
            return squad.SquadPredictRun, lambda cfg, _ns: squad.predict_run(cfg, _dist_info())
        return squad.SquadRun, lambda cfg, _ns: squad.finetune(cfg, _dist_info())
    return build


def _glue(mode: str):
    def build():
        from bertforge.tasks import glue
        classes = {"finetune": glue.GlueRun, "predict": glue.GluePredictRun, "evaluate": glue.GlueEvaluateRun}
        run = glue.finetune if mode == "finetune" else glue.evaluate_run
        return classes[mode], lambda cfg, _ns: run(cfg, _dist_info())
    return build


def _evaluate_squad():
    from bertforge.tasks.squad import EvaluateArgs, evaluate_files

    def handler(cfg, _ns):
        evaluate_files(cfg)
    return EvaluateArgs, handler


def _pretrain():
    from bertforge.tasks import pretraining
    return pretraining.PretrainRun, lambda cfg, _ns: pretraining.pretrain(cfg, _dist_info())


def _prepare():
    from bertforge.data.pretraining import PrepareConfig, prepare_pretraining_data

    def handler(cfg, _ns):
        summary = prepare_pretraining_data(cfg)
        import json
        print(json.dumps(summary, indent=2, default=str))
    return PrepareConfig, handler


def _convert():
    from bertforge.checkpoint.commands import ConvertArgs, convert
    return ConvertArgs, lambda cfg, _ns: convert(cfg)


def _info():
    from bertforge.checkpoint.commands import InfoArgs, info
    return InfoArgs, lambda cfg, _ns: info(cfg)


def _benchmark():
    from bertforge.bench import BenchmarkArgs, run_benchmark

    def handler(cfg, _ns):
        run_benchmark(cfg, _dist_info())
    return BenchmarkArgs, handler


def _serve():
    from bertforge.serve import ServeArgs, serve
    return ServeArgs, lambda cfg, _ns: serve(cfg)


COMMANDS = [
    Command(("finetune", "squad"), "fine-tune on SQuAD v1.1, then predict and evaluate", _squad("finetune")),
    Command(("finetune", "glue"), "fine-tune on a GLUE task, evaluate, write submissions", _glue("finetune")),
    Command(("predict", "squad"), "predict SQuAD answers with a fine-tuned checkpoint", _squad("predict")),
    Command(("predict", "glue"), "write GLUE test-set submission files", _glue("predict")),
    Command(("evaluate", "squad"), "official SQuAD v1.1 EM/F1 of a predictions file", _evaluate_squad,
            positional=True),
    Command(("evaluate", "glue"), "GLUE dev-set metrics of a fine-tuned checkpoint", _glue("evaluate")),
    Command(("pretrain",), "pretrain BERT (MLM + NSP, LAMB) from prepared shards", _pretrain),
    Command(("prepare", "pretraining"), "turn raw text into pretraining shards", _prepare),
    Command(("convert",), "convert a checkpoint (Google TF, HF, NVIDIA DLE, bertforge) to HF or bertforge",
            _convert, positional=True),
    Command(("info",), "print a checkpoint's config, parameter count and dtype", _info, positional=True),
    Command(("benchmark",), "measure training/inference speed (optionally against Hugging Face)", _benchmark),
    Command(("serve",), "serve a model's answer/classify/encode over HTTP and JSON, batching requests", _serve,
            positional=True),
]


# ---- argv normalisation ------------------------------------------------------------------------


def _unwrap_optional(tp):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _kind(tp) -> str:
    """How a flag takes its value: "bool" (absl style), "optional" (bool | str: bare means true,
    or a value such as a path), or "value"."""
    if tp is bool:
        return "bool"
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and set(typing.get_args(tp)) == {bool, str}:
        return "optional"
    return "value"


def flag_table(cls: type, prefix: str = "") -> dict[str, tuple[str, str]]:
    """Every leaf field of a (nested) dataclass: dotted name -> (dotted name, kind)."""
    table = {}
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        tp = _unwrap_optional(hints[f.name])
        name = prefix + f.name
        if is_dataclass(tp):
            table.update(flag_table(tp, name + "."))
        else:
            table[name] = (name, _kind(tp))
    return table


def alias_table(cls: type) -> dict[str, tuple[str, str]]:
    """Flat names (and ALIASES) -> (dotted name, kind), for names unique in the config."""
    table = flag_table(cls)
    by_leaf: dict[str, list[str]] = {}
    for dotted in table:
        by_leaf.setdefault(dotted.rsplit(".", 1)[-1], []).append(dotted)
    aliases = dict(table)
    for leaf, dotted in by_leaf.items():
        if len(dotted) == 1:
            aliases.setdefault(leaf, table[dotted[0]])
    for alias, target in ALIASES.items():
        if target is not None and target in aliases and alias not in aliases:
            aliases[alias] = aliases[target]
    return aliases


def normalize_argv(argv: Sequence[str], cls: type) -> list[str]:
    """Rewrite reference-recipe flags into the parser's dotted flags (see module docstring)."""
    aliases = alias_table(cls)
    out: list[str] = []
    precision: tuple[str, str] | None = None  # (switch, precision) of a --fp16/--bf16 seen
    i = 0
    argv = list(argv)
    while i < len(argv):
        token = argv[i]
        i += 1
        if not token.startswith("--") or token == "--":
            out.append(token)
            continue
        name, eq, value = token[2:].partition("=")
        if name in IGNORED_FLAGS or name in UNSUPPORTED:
            if not eq and i < len(argv) and not argv[i].startswith("--"):
                value = argv[i]
                i += 1
            elif not eq:
                value = "true"
            if name in UNSUPPORTED and _bool_word(value) != UNSUPPORTED[name][0]:
                from bertforge.errors import ConfigError
                raise ConfigError(f"--{name}={value}: {UNSUPPORTED[name][1]}")
            if name in IGNORED_FLAGS:
                log.warning("--%s is a reference-script flag with no meaning here; ignored", name)
            continue
        if name in PRECISION_SWITCHES and name not in aliases and "runtime.precision" in aliases:
            if not eq and i < len(argv) and argv[i].lower() in BOOL_WORDS:
                value = argv[i]
                i += 1
            if not eq or _bool_word(value) == "true":
                chosen = PRECISION_SWITCHES[name]
                if precision and precision[1] != chosen:
                    from bertforge.errors import ConfigError
                    raise ConfigError(f"--{precision[0]} and --{name} ask for different precisions "
                                      f"({precision[1]}, {chosen}); give one")
                precision = (name, chosen)
                out.append(f"--runtime.precision={chosen}")
            continue
        name = _spelled_as_field(name, aliases)
        negated = False
        if name not in aliases:
            for prefix in ("no-", "no_", "no"):
                stem = _spelled_as_field(name[len(prefix):], aliases)
                if name.startswith(prefix) and stem in aliases and aliases[stem][1] in ("bool", "optional"):
                    name, negated = stem, True
                    break
        if name not in aliases:
            out.append(token)
            continue
        dotted, kind = aliases[name]
        if kind == "bool" or (kind == "optional" and (negated or not eq)):
            if negated:
                value = "false"
            elif not eq:
                # absl: a bare --flag means true; a following true/false is its value (and, for
                # an optional-value flag, any other word that is not a flag)
                nxt = argv[i] if i < len(argv) else None
                if nxt is not None and (nxt.lower() in BOOL_WORDS or (kind == "optional" and not nxt.startswith("-"))):
                    value = nxt
                    i += 1
                else:
                    value = "true"
            out.append(f"--{dotted}={_bool_word(value)}")
        elif eq:
            out.append(f"--{dotted}={value}")
        else:
            out.append(f"--{dotted}")
    return out


def _spelled_as_field(name: str, aliases: dict) -> str:
    """--compare-hf is --compare_hf: dashes for underscores, where that names a field."""
    underscored = name.replace("-", "_")
    return underscored if name not in aliases and underscored in aliases else name


def _bool_word(value: str) -> str:
    low = value.lower()
    if low in ("true", "1", "yes", "t", "y"):
        return "true"
    if low in ("false", "0", "no", "f", "n"):
        return "false"
    if low in ("none", "null"):
        return "null"
    return value  # let the parser reject it with its own message


# ---- parsing and dispatch ----------------------------------------------------------------------


def _top_help() -> str:
    lines = ["usage: bertforge <command> [<task>] [flags]   (bertforge <command> --help for its flags)",
             "", "Pretrain, fine-tune, evaluate and convert BERT models on PyTorch.", "", "commands:"]
    for c in COMMANDS:
        lines.append(f"  {' '.join(c.path):<22} {c.help}")
    lines += ["", "Flags take the names of Google's run_squad.py / run_classifier.py / "
              "create_pretraining_data.py and NVIDIA's run_pretraining.py; recipes: --config configs/....yaml"]
    return "\n".join(lines)


def _find_command(argv: list[str]) -> tuple[Command | None, list[str]]:
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
    from jsonargparse import ActionConfigFile, ArgumentParser, set_parsing_settings

    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    aliases = {k: v[0] for k, v in alias_table(cls).items() if k != v[0]}
    epilog = "Reference flag names accepted: " + ", ".join(
        f"--{k} (= --{v})" for k, v in sorted(aliases.items())) if aliases else None
    parser = ArgumentParser(prog="bertforge " + " ".join(command.path), description=command.help,
                            epilog=epilog, exit_on_error=True)
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML recipe (see configs/)")
    parser.add_class_arguments(cls, None, as_positional=command.positional)
    return parser


def _instantiate(parser, ns, cls: type):
    init = parser.instantiate(ns)
    values = {f.name: init[f.name] for f in fields(cls)}
    return cls(**values)


def setup_logging(rank: int) -> None:
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s"
                        if int(os.environ.get("WORLD_SIZE", 1)) > 1 else
                        "%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_top_help())
        return 0
    if argv[0] == "--version":
        from bertforge import __version__
        print(f"bertforge {__version__}")
        return 0
    command, rest = _find_command(argv)
    if command is None:
        known = [" ".join(c.path) for c in COMMANDS]
        first = [a for a in argv if not a.startswith("-")][:2]
        print(f"bertforge: unknown command {' '.join(first)!r}; commands: {', '.join(known)}",
              file=sys.stderr)
        return 2
    setup_logging(int(os.environ.get("RANK", 0)))
    if not sys.stderr.isatty():
        # Progress bars in a log file: one line every 30 s, not one per update.
        os.environ.setdefault("TQDM_MININTERVAL", "30")
    try:
        cls, handler = command.build()
        parser = _build_parser(command, cls)
        ns = parser.parse_args(normalize_argv(rest, cls))
        cfg = _instantiate(parser, ns, cls)
        result = handler(cfg, ns)
    except BertforgeError as e:
        print(f"bertforge {' '.join(command.path)}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        # Disk full, quota, permissions, read-only file systems met while writing results:
        # one line naming the file, not a traceback.
        if e.errno not in FILESYSTEM_ERRNOS:
            raise
        where = f" {e.filename}" if e.filename else ""
        print(f"bertforge {' '.join(command.path)}: error:{where}: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return result if isinstance(result, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
