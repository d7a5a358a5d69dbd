"""The `bertforge` command: one entry point, one subcommand per job.

Each job's flags come from its typed run config (dataclasses parsed by jsonargparse, with YAML
recipes through `--config recipe.yaml` and dotted overrides such as `--train.learning_rate`).
On top of that, this module (and only this module) makes the reference recipes' command lines
work unchanged:
- flat names: `--learning_rate` is `--train.learning_rate` (every field whose name is unique in
  the run config), plus the aliases in `reference_flags.ALIASES` (`--bert_config_file`, ...);
- absl-style booleans as Google's scripts take them: `--do_train`, `--do_train=true`,
  `--nodo_lower_case`, `--no-compile`;
- the reference scripts' other flags as `bertforge.reference_flags` says: switches (`--fp16`,
  `--use_habana`), knobs accepted with a note, values refused, NVIDIA's per-optimizer-step
  `--train_batch_size`, Google's pretraining optimisation, `--bert_model bert-large-uncased`;
- launcher flags anywhere (`--local_rank` of torch.distributed.launch, Intel's thread pools).
It also reads torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE), sets up logging, and turns
user errors into one clear message and exit status 2, without a traceback: every unknown flag
in one line with a "did you mean", a bad value in one line, never a usage dump.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from bertforge import reference_flags as refs
from bertforge.errors import BertforgeError

log = logging.getLogger("bertforge")

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


_ARGV_LOCAL_RANK: list[int] = []  # a --local_rank that torch.distributed.launch put on the command line


def _dist_info():
    from bertforge.train.runtime import DistInfo
    local_rank = os.environ.get("LOCAL_RANK", _ARGV_LOCAL_RANK[-1] if _ARGV_LOCAL_RANK else 0)
    return DistInfo(rank=int(os.environ.get("RANK", 0)), local_rank=int(local_rank),
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


def _download(dataset: str):
    def build():
        from bertforge import download

        cls = download.DownloadSquadArgs if dataset == "squad" else download.DownloadGlueArgs

        def handler(cfg, _ns):
            download.download(dataset, cfg, default_cache_dir() if cfg.cache_dir is None else Path(cfg.cache_dir))
        return cls, handler
    return build


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/bertforge, else ~/.cache/bertforge (the XDG base directory convention)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bertforge"


def _plot():
    from bertforge.plot import PlotArgs, plot
    return PlotArgs, lambda cfg, _ns: plot(cfg)


def _export():
    from bertforge.export import ExportArgs, export
    return ExportArgs, lambda cfg, _ns: export(cfg)


def _serve():
    from bertforge.serve import ServeArgs, serve
    return ServeArgs, lambda cfg, _ns: serve(cfg, os.environ)


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
    Command(("export",), "export a trained model to ONNX or torch.export for serving", _export, positional=True),
    Command(("download", "squad"), "download SQuAD v1.1 into a cache directory, checksums verified",
            _download("squad")),
    Command(("download", "glue"), "download GLUE tasks into a cache directory, checksums verified",
            _download("glue")),
    Command(("plot",), "plot training curves of runs (loss, lr, seq/s, eval metrics) into a PNG", _plot,
            positional=True),
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
    for alias, target in refs.ALIASES.items():
        if target is not None and target in aliases and alias not in aliases:
            aliases[alias] = aliases[target]
    return aliases


@dataclass
class _Flag:
    """One flag of the rewritten command line: `--dotted=value`, `--dotted value` or `--dotted`."""

    dotted: str
    value: str | None
    eq: bool = True
    given_as: str = ""  # the name the user wrote, for messages

    def tokens(self) -> list[str]:
        if self.value is None:
            return [f"--{self.dotted}"]
        return [f"--{self.dotted}={self.value}"] if self.eq else [f"--{self.dotted}", self.value]


@dataclass
class Rewritten:
    """normalize_argv's result: the parser's argv, and what the user should be told."""

    argv: list[str]
    notes: list[str] = field(default_factory=list)  # accepted flags whose meaning differs or is void
    family: str = "bertforge"  # "nvidia" when NVIDIA's (per-optimizer-step) batch flags are read


def normalize_argv(argv: Sequence[str], cls: type) -> list[str]:
    """Rewrite reference-recipe flags into the parser's dotted flags (see module docstring)."""
    return rewrite_argv(argv, cls).argv


def rewrite_argv(argv: Sequence[str], cls: type) -> Rewritten:
    """normalize_argv with the notes for the user (flags accepted with another meaning or none)."""
    from bertforge.errors import ConfigError

    aliases = alias_table(cls)
    names = [t[2:].partition("=")[0] for t in argv if t.startswith("--") and len(t) > 2]
    family = "nvidia" if any(n in refs.NVIDIA_MARKERS for n in names) else "bertforge"
    flags: list[_Flag | str] = []  # rewritten flags, and tokens passed through unchanged
    notes: list[str] = []
    errors: list[str] = []
    precision: tuple[str, str] | None = None  # (switch, precision) of a --fp16/--bf16 seen
    i = 0
    argv = list(argv)

    def take_value(eq: bool, value: str, bool_like: bool) -> str:
        """The flag's value: after '=', else the next token when it is one (a bool word, for a
        switch; anything but a flag, otherwise); a bare switch means true."""
        nonlocal i
        if eq:
            return value
        nxt = argv[i] if i < len(argv) else None
        if nxt is not None and (nxt.lower() in BOOL_WORDS if bool_like else not nxt.startswith("--")):
            i += 1
            return nxt
        return "true"

    while i < len(argv):
        token = argv[i]
        i += 1
        if not token.startswith("--") or token == "--":
            flags.append(token)
            continue
        name, eq, value = token[2:].partition("=")
        negated_switch = next((name[len(p):] for p in ("no-", "no_", "no") if name.startswith(p)
                               and name[len(p):] in refs.SWITCHES and name[len(p):] not in aliases), None)
        if negated_switch and not eq:
            continue  # absl's --noamp: the switch's default, off
        if name in refs.SWITCHES and name not in aliases:
            on = _bool_word(take_value(bool(eq), value, True)) == "true"
            for dotted, setting in refs.SWITCHES[name].items():
                if dotted not in aliases or not on:
                    continue
                if dotted == "runtime.precision":
                    if precision and precision[1] != setting:
                        errors.append(f"--{precision[0]} and --{name} ask for different precisions "
                                      f"({precision[1]}, {setting}); give one")
                    precision = (name, setting)
                flags.append(_Flag(dotted, setting, given_as=name))
            continue
        if name in refs.NOTED and name not in aliases:
            take_value(bool(eq), value, False)
            notes.append(f"--{name}: {refs.NOTED[name]}")
            continue
        if name in refs.REFUSED and name not in aliases:
            value = take_value(bool(eq), value, True)
            allowed, reason = refs.REFUSED[name]
            if _same_value(value, allowed):
                continue
            errors.append(f"--{name}={value}: {reason}")
            continue
        if name in refs.THREAD_FLAGS:
            errors.append(f"--{name} sets a process-wide thread pool; give it before any other flag")
            continue
        if name == "mode" and name not in aliases:
            value = take_value(bool(eq), value, False)
            if value in refs.INTEL_MODES:
                notes.append(f"--mode {value}: {refs.NOTED['benchmark']}")
            else:
                errors.append(f"--mode {value}: this command has no mode (Intel's benchmark/accuracy modes "
                              f"are accepted and mean nothing here)")
            continue
        if name == "num_warmup_steps" and "data.input_dir" in aliases:
            flags.append(_Flag("__num_warmup_steps", take_value(bool(eq), value, False), given_as=name))
            continue
        if name == "steps_this_run":
            flags.append(_Flag("__steps_this_run", take_value(bool(eq), value, False), given_as=name))
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
            flags.append(token)
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
            flags.append(_Flag(dotted, _bool_word(value), given_as=name))
        elif eq:
            flags.append(_Flag(dotted, value, given_as=name))
        elif i < len(argv) and not argv[i].startswith("--"):
            flags.append(_Flag(dotted, argv[i], eq=False, given_as=name))
            i += 1
        else:
            flags.append(_Flag(dotted, None, given_as=name))
    _reference_values(flags, aliases, family, notes, errors)
    if errors:
        raise ConfigError("; ".join(errors))
    out: list[str] = []
    for f in flags:
        out.extend(f.tokens() if isinstance(f, _Flag) else [f])
    return Rewritten(out, notes, family)


def _same_value(value: str, allowed: str) -> bool:
    try:
        return float(value) == float(allowed)
    except ValueError:
        return _bool_word(value) == allowed


def _reference_values(flags: list, aliases: dict, family: str, notes: list[str], errors: list[str]) -> None:
    """Values the reference scripts spell differently, and flags whose meaning depends on the
    family of the command line (see bertforge.reference_flags)."""
    given = {f.dotted: f for f in flags if isinstance(f, _Flag)}

    def value_of(dotted: str) -> str | None:
        f = given.get(dotted)
        return f.value if f is not None else None

    def drop(dotted: str) -> None:
        for f in [f for f in flags if isinstance(f, _Flag) and f.dotted == dotted]:
            flags.remove(f)
        given.pop(dotted, None)

    def put(dotted: str, value: str) -> None:
        if dotted in given:
            given[dotted].value = value
        else:
            given[dotted] = _Flag(dotted, value)
            flags.append(given[dotted])

    for f in given.values():
        if f.value is None:
            continue
        leaf = f.dotted.rsplit(".", 1)[-1]
        if leaf == "precision" and f.value.lower() in refs.PRECISION_NAMES:
            f.value = refs.PRECISION_NAMES[f.value.lower()]
        elif leaf in ("max_steps", "log_every", "save_every") or f.dotted == "__steps_this_run":
            number = _whole_number(f.value)
            if number is None:
                errors.append(f"--{f.given_as or leaf} {f.value}: expected a whole number of steps")
            elif leaf == "max_steps" and number <= 0:
                f.value = "null"  # NVIDIA's -1: no step limit (the epochs decide)
            else:
                f.value = str(number)
    steps_this_run = value_of("__steps_this_run")
    drop("__steps_this_run")
    if (steps_this_run is not None and steps_this_run.isdigit() and int(steps_this_run) > 0
            and steps_this_run != value_of("train.max_steps")):
        errors.append(f"--steps_this_run {steps_this_run}: bertforge runs to --max_steps; stop a run early "
                      f"and continue it with --save_every N and --resume")
    _model_name(flags, aliases, notes)
    for f in [f for f in flags if isinstance(f, _Flag) and f.given_as == "output_file"]:
        if f.value and ("," in f.value or Path(f.value).suffix.lower() in (".tfrecord", ".tfrecords", ".hdf5", ".h5")):
            errors.append(f"--output_file {f.value}: bertforge writes a directory of shards, not a TFRecord/HDF5 "
                          f"file; pass --output_dir DIR (bertforge pretrain --input_dir DIR reads it)")
        else:
            notes.append(f"--output_file {f.value}: written as a directory of shards (pretrain --input_dir reads it)")
    given = {f.dotted: f for f in flags if isinstance(f, _Flag)}
    if family == "nvidia":
        _nvidia_batch(given, value_of, put, notes, errors)
    if "data.input_dir" in aliases and any(f.given_as in refs.GOOGLE_PRETRAINING_MARKERS or
                                           f.dotted == "__num_warmup_steps" for f in given.values()):
        _google_pretraining(given, value_of, put, notes, errors)
    flags[:] = [f for f in flags if not (isinstance(f, _Flag) and f.dotted.startswith("__"))]


def _whole_number(text: str) -> int | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return int(number) if number.is_integer() else None


def _model_name(flags: list, aliases: dict, notes: list[str]) -> None:
    """NVIDIA's --bert_model bert-large-uncased: a preset that implies the casing. A config file
    (--config_file / --bert_config_file) gives the architecture instead, whatever the order."""
    if "model.bert_model" not in aliases:
        return
    model = [f for f in flags if isinstance(f, _Flag) and f.dotted == "model.bert_model"]
    files = [f for f in model if f.given_as in ("config_file", "bert_config_file")]
    named = [f for f in model if f not in files and f.value in refs.MODEL_NAMES]
    if not named:
        return
    name = named[-1].value
    size, uncased = refs.MODEL_NAMES[name]
    keep = files[-1] if files else named[-1]
    from_checkpoint = not files and any(isinstance(f, _Flag) and f.dotted == "model.init_checkpoint" for f in flags)
    for f in model:
        if f is not keep or from_checkpoint:
            flags.remove(f)
    if keep is named[-1]:
        keep.value = size
    if not any(isinstance(f, _Flag) and f.dotted == "model.do_lower_case" for f in flags):
        flags.append(_Flag("model.do_lower_case", "true" if uncased else "false"))
        notes.append(f"--bert_model {name}: do_lower_case={str(uncased).lower()} from the name"
                     + (f"; the architecture from --{keep.given_as}" if files else
                        "; the architecture from --init_checkpoint" if from_checkpoint else ""))


def _nvidia_batch(given, value_of, put, notes, errors) -> None:
    """NVIDIA's --train_batch_size N is per device per optimizer step; with
    --gradient_accumulation_steps K its scripts train micro-batches of N / K."""
    batch, accumulation = value_of("train.train_batch_size"), value_of("train.gradient_accumulation_steps")
    if batch is None or accumulation is None or given["train.gradient_accumulation_steps"].given_as != \
            "gradient_accumulation_steps":
        return
    try:
        n, k = int(batch), int(accumulation)
    except ValueError:
        return  # the parser reports the value
    if k <= 1:
        return
    if value_of("train.global_batch_size") is not None:
        errors.append("--global_batch_size with NVIDIA's --train_batch_size and --gradient_accumulation_steps: "
                      "give one spelling of the batch")
        return
    if n % k:
        errors.append(f"NVIDIA's --train_batch_size {n} is per optimizer step and must divide by "
                      f"--gradient_accumulation_steps {k}; in bertforge's terms give "
                      f"--train.train_batch_size MICRO --train.gradient_accumulation_steps {k} "
                      f"(global = MICRO x devices x {k}) or --global_batch_size")
        return
    put("train.train_batch_size", str(n // k))
    notes.append(f"--train_batch_size {n} --gradient_accumulation_steps {k}: NVIDIA's batch is per optimizer "
                 f"step, so micro-batches of {n // k} (bertforge: --train.train_batch_size {n // k} "
                 f"--train.gradient_accumulation_steps {k}, or --global_batch_size {n} x devices)")


def _google_pretraining(given, value_of, put, notes, errors) -> None:
    """Google's run_pretraining.py: AdamWeightDecay, linear (poly power 1) decay to 0 over all
    steps, warmup counted in steps (MLPerf adds --optimizer and --poly_power)."""
    if value_of("train.optimizer") is None:
        put("train.optimizer", "adamw")
    put("train.schedule", "poly")
    if value_of("train.schedule_power") is None:
        put("train.schedule_power", "1.0")
    warmup = given.pop("__num_warmup_steps", None)
    steps = value_of("train.max_steps")
    if warmup is None:
        warmup_steps = refs.GOOGLE_DEFAULT_WARMUP_STEPS
    else:
        warmup_steps = _whole_number(warmup.value or "")
        if warmup_steps is None or warmup_steps < 0:
            errors.append(f"--num_warmup_steps {warmup.value}: expected a whole number of steps")
            return
    if steps is None or steps == "null":
        errors.append("--num_warmup_steps counts steps: give --num_train_steps (or --max_steps) too")
        return
    put("train.warmup_proportion", repr(min(1.0, warmup_steps / int(steps))))
    notes.append(f"Google's run_pretraining flags: AdamW with linear decay over {steps} steps, "
                 f"{min(warmup_steps, int(steps))} warmup steps (--optimizer lamb for LAMB)")


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
    # No prefix matching: --mode must not be taken for --model. Errors come back as exceptions
    # so that main() reports them in one line.
    parser = ArgumentParser(prog="bertforge " + " ".join(command.path), description=command.help,
                            epilog=epilog, exit_on_error=False, allow_abbrev=False)
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML recipe (see configs/)")
    # A required list field takes one or more positional words (plot RUN [RUN ...]); jsonargparse
    # would take a single JSON list there.
    hints = typing.get_type_hints(cls)
    variadic = [f.name for f in fields(cls) if command.positional and f.default is MISSING
                and f.default_factory is MISSING and typing.get_origin(hints[f.name]) is list]
    parser.add_class_arguments(cls, None, as_positional=command.positional, skip=set(variadic))
    if variadic:
        import docstring_parser

        docs = {p.arg_name: p.description for p in docstring_parser.parse_from_object(cls).params}
        for name in variadic:
            parser.add_argument(name, nargs="+", help=docs.get(name))
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


def take_launcher_flags(argv: list[str]) -> tuple[list[str], int | None, dict[str, int]]:
    """Flags for the process rather than the command, taken out wherever they stand:
    `--local_rank N` / `--local-rank=N` (torch.distributed.launch puts it before the command) and
    Intel's `--intra_op_parallelism_threads` / `--inter_op_parallelism_threads` (torch's pools)."""
    from bertforge.errors import ConfigError

    rest, local_rank, threads = [], None, {}
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        name, eq, value = token[2:].partition("=") if token.startswith("--") else ("", "", "")
        if name in ("local_rank", "local-rank") or name in refs.THREAD_FLAGS:
            if not eq:
                value = argv[i] if i < len(argv) else ""
                i += 1
            if not value.lstrip("-").isdigit():
                raise ConfigError(f"--{name} takes a whole number, got {value!r}")
            if name in refs.THREAD_FLAGS:
                threads[refs.THREAD_FLAGS[name]] = int(value)
            else:
                local_rank = int(value)
            continue
        rest.append(token)
    return rest, local_rank, threads


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
        close = difflib.get_close_matches(flag, candidates, n=1, cutoff=0.75)
        problems.append(f"{flag} (did you mean {close[0]}?)" if close else flag)
    return problems


def parse_command(command: Command, argv: Sequence[str]):
    """The run config of `command` from its flags (reference spellings rewritten, their notes
    logged); returns (config, handler, namespace). ConfigError names every unknown flag, or the
    first bad value, in one line."""
    from jsonargparse import ArgumentError

    from bertforge.errors import ConfigError

    name = " ".join(command.path)
    cls, handler = command.build()
    parser = _build_parser(command, cls)
    rewritten = rewrite_argv(argv, cls)
    bad = unknown_flags(rewritten.argv, parser, list(alias_table(cls)))
    if bad:
        raise ConfigError(f"unknown flag{'s' if len(bad) > 1 else ''}: {', '.join(bad)} "
                          f"(bertforge {name} --help lists the flags)")
    if rewritten.notes:
        log.warning("reference flags with another meaning here:\n  %s", "\n  ".join(rewritten.notes))
    try:
        ns = parser.parse_args(rewritten.argv)
    except ArgumentError as e:
        raise ConfigError(f"{' '.join(str(e).split())} (bertforge {name} --help lists the flags)") from None
    return _instantiate(parser, ns, cls), handler, ns


def find_command(argv: Sequence[str]) -> tuple[Command | None, list[str]]:
    """The command argv names, and the rest of argv (launcher flags already taken out)."""
    return _find_command(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_top_help())
        return 0
    if argv[0] == "--version":
        from bertforge import __version__
        print(f"bertforge {__version__}")
        return 0
    try:
        argv, local_rank, threads = take_launcher_flags(argv)
    except BertforgeError as e:
        print(f"bertforge: error: {e}", file=sys.stderr)
        return 2
    if local_rank is not None:
        _ARGV_LOCAL_RANK.append(local_rank)
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
    name = " ".join(command.path)
    try:
        cfg, handler, ns = parse_command(command, rest)
        _set_threads(threads)
        result = handler(cfg, ns)
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
    return result if isinstance(result, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
