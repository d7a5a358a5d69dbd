"""The help of bertforge's commands, written from their run configs alone: no parser is built
and nothing but the config's module is imported, so `--help` is quick.

`command_help` lists the flags a user sets, grouped as the config nests them, each with its
default and the first sentence of its docstring, less its asides in parentheses (or the whole
docstring, for `--help-full`); `compat_help` lists the reference scripts' names that the command
also takes (`--help-compat`).
"""

from __future__ import annotations

import re
import textwrap
import types
import typing
from dataclasses import MISSING, Field, dataclass, fields, is_dataclass
from typing import Any

from bertforge.compat import alias_table, flag_table
from bertforge.compat.argv import unwrap_optional
from bertforge.compat import flags as refs

_LEFT = 28  # the width of the flag column
_ABBREVIATIONS = ("e.g.", "i.e.", "cf.", "vs.")


@dataclass
class _Flag:
    name: str  # as a user types it: the flat name where it is unique, else the dotted one
    metavar: str
    default: str | None  # None: no default worth showing (None, or a switch that is off)
    doc: str
    required: bool = False  # a positional argument (convert SRC DST)


@dataclass
class _Group:
    prefix: str  # "" for the top level, else "train." ...
    title: str
    flags: list[_Flag]


def command_help(name: str, summary: str, cls: type, positional: bool, width: int, full: bool = False) -> str:
    """`bertforge NAME --help`: usage, what the command does (the first sentence of the config's
    docstring, else `summary`), then the flags by group, the top level's first; `full`: each
    flag's whole docstring rather than its summary."""
    top, *nested = _groups(cls, _flat_names(cls), positional)
    usage = f"usage: bertforge {name} [--config RECIPE.yaml] [--FLAG VALUE ...]"
    usage += "".join(f" {f.metavar}" for f in top.flags if f.required)
    lines = [*textwrap.wrap(usage, width, subsequent_indent=" " * len(f"usage: bertforge {name} ")), "",
             *textwrap.wrap(top.title or summary, width), "",
             *_rows([("-h, --help", "this help; --help-full: whole descriptions"),
                     ("--help-compat", "the reference scripts' names for these flags"),
                     ("--config RECIPE.yaml", "a recipe (configs/); later flags override it"),
                     ("--print_config", "print the configuration the flags give, and exit")], width),
             ""]
    # the groups are named as in a recipe (data:, train:); a flag's dotted name includes its group's
    dotted = next((f"; dotted names work too (--{g.prefix}{g.flags[0].name.rsplit('.', 1)[-1]})"
                   for g in nested if g.flags), "")
    lines += textwrap.wrap(("Arguments, then flags" if any(f.required for f in top.flags) else "Flags")
                           + f" with their defaults (else their types){dotted}; booleans also take "
                             f"--flag=false, --noflag:", width)
    lines += _rows([_row(f, full) for f in top.flags], width)
    for group in nested:
        lines += ["", *textwrap.wrap(f"{group.prefix.rstrip('.')}: {group.title}", width)]
        lines += _rows([_row(f, full) for f in group.flags], width)
    return "\n".join(lines)


def _row(f: _Flag, full: bool) -> tuple[str, str]:
    """A flag's two columns: `--name DEFAULT` where it has one (a choice or a switch: its
    default in the text), else `--name TYPE`, or a positional argument's name; and its
    docstring's first sentence less its asides (`full`: the whole docstring)."""
    text = f.doc if full else _without_asides(_first_sentence(f.doc))
    if f.required:
        return f.metavar, text
    if f.default is None or f.metavar.startswith("{") or f.metavar in ("", "[STR]"):
        return f"--{f.name} {f.metavar}".rstrip(), text + ("" if f.default is None else f" (default: {f.default})")
    return f"--{f.name} {f.default}", text


def compat_help(name: str, cls: type, width: int) -> str:
    """`bertforge NAME --help-compat`: the reference scripts' flag names, and what they mean here."""
    aliases = alias_table(cls)
    shown = _flat_names(cls)

    def field_flag(dotted: str) -> str:
        leaf = dotted.rsplit(".", 1)[-1]
        return f"--{leaf}" if leaf in shown else f"--{dotted}"

    # an alias that is also a field's name here names the field
    names = [(f"--{alias}", f"= {field_flag(aliases[alias][0])}") for alias, target in sorted(refs.ALIASES.items())
             if alias in aliases and aliases[alias] == aliases.get(target)]
    switches, refused = [], [f"--{n} (only {allowed})" for n, (allowed, _) in refs.REFUSED.items() if n not in aliases]
    for switch, settings in refs.SWITCHES.items():
        sets = [(d, v) for d, v in settings.items() if d in aliases and v in aliases.choices.get(d, (v,))]
        if switch in aliases or not any(d in aliases for d in settings):
            continue
        if switch in refs.INFERENCE_SWITCHES and "do_train" in aliases:
            refused.append(f"--{switch} (inference only)")
        elif not sets:
            refused.append(f"--{switch} (not on this command yet)")
        else:
            switches.append((f"--{switch}", "= " + ", ".join(f"{field_flag(d)} {v}" for d, v in sets)))
    noted = [f"--{n}" for n in refs.NOTED if n not in aliases]
    lines = [f"bertforge {name} also takes the reference scripts' (Google's, NVIDIA's, Habana's, Intel's, "
             f"MLPerf's) names for its flags:", ""]
    lines += _rows(names + switches, width)
    lines += ["", "Accepted with a note saying what replaces them (they change nothing here): "
              + ", ".join(noted) + ".",
              "", "Refused, or accepted at their reference default only: " + ", ".join(refused) + ".",
              "", "Also: absl booleans (--do_train, --do_train=true, --nodo_lower_case), dashes for underscores "
                  "(--no-compile), launchers' --local_rank and Intel's --intra_op_parallelism_threads anywhere "
                  "on the line, NVIDIA's per-optimizer-step --train_batch_size (divided by "
                  "--gradient_accumulation_steps), --bert_model bert-large-uncased, --max_steps -1."]
    return "\n".join(_wrap_long(lines, width))


def top_help(commands: list[tuple[str, str]]) -> str:
    """`bertforge --help`: the commands, each with its line."""
    lines = ["usage: bertforge <command> [<task>] [flags]   (bertforge <command> --help for its flags)",
             "", "Pretrain, fine-tune, evaluate and convert BERT models on PyTorch.", "", "commands:"]
    lines += [f"  {command:<22} {summary}" for command, summary in commands]
    lines += [f"  {'launch_benchmark':<22} Intel Model Zoo's launch_benchmark.py, run as the bertforge command"]
    lines += ["", "Flags take the names of Google's run_squad.py / run_classifier.py / "
              "create_pretraining_data.py and NVIDIA's run_pretraining.py; recipes: --config configs/....yaml"]
    return "\n".join(lines)


def launch_benchmark_help(width: int = 100) -> str:
    """`bertforge launch_benchmark --help`."""
    return "\n".join(_wrap_long([
        "usage: bertforge launch_benchmark --model-name=bert_large --mode=training|inference --precision=P "
        "--batch-size=N [--checkpoint DIR] [--data-location DIR] [--output-dir DIR] [--benchmark-only] "
        "[--accuracy-only] [--mpi_num_processes N] -- key=value ...", "",
        "Intel Model Zoo's launch_benchmark.py (BERT-large) as the bertforge command that does the same, which it "
        "prints and runs: train_option=SQuAD -> finetune squad, Classifier -> finetune glue, Pretraining -> pretrain; "
        "inference -> predict squad (files from --data-location, the checkpoint model.ckpt-7299 from --checkpoint), "
        "profile=True -> benchmark --profile (a torch.profiler trace). --mpi_num_processes N prints the torchrun "
        "line instead (learning rate scaled by sqrt(N), as launch_benchmark.py does); --docker-image, --volume "
        "and --socket-id are noted as not applicable. The key=value arguments are Google's flags (max-predictions "
        "and warmup-steps are Intel's names for max_predictions_per_seq and num_warmup_steps)."], width))


def group_help(group: str, tasks: list[tuple[str, str]]) -> str:
    """`bertforge finetune`: the tasks of a command group."""
    lines = [f"usage: bertforge {group} <task> [flags]   (bertforge {group} <task> --help for its flags)",
             "", "tasks:"]
    lines += [f"  {task:<10} {summary}" for task, summary in tasks]
    return "\n".join(lines)


# ---- the config, as help sees it -----------------------------------------------------------


def _flat_names(cls: type) -> set[str]:
    """The leaf names that are unique in the config (the CLI takes them without their group)."""
    leaves = [dotted.rsplit(".", 1)[-1] for dotted in flag_table(cls)]
    return {leaf for leaf in leaves if leaves.count(leaf) == 1}


def _groups(cls: type, flat: set[str], positional: bool, prefix: str = "", title: str | None = None,
            instance: Any = None) -> list[_Group]:
    """The flags of `cls` (whose default instance, when it is nested, is `instance`) and of the
    configs nested in it, one group per config."""
    docs = _field_docs(cls)
    hints = typing.get_type_hints(cls)
    # a dataclass without a docstring has its signature as __doc__
    doc = "" if (cls.__doc__ or "").startswith(cls.__name__ + "(") else cls.__doc__ or ""
    group = _Group(prefix, title or _first_sentence(doc), [])
    nested = []
    for f in fields(cls):
        tp = unwrap_optional(hints[f.name])
        default = getattr(instance, f.name) if instance is not None else _field_default(f)
        if is_dataclass(tp):
            nested += _groups(tp, flat, False, f"{prefix}{f.name}.", _first_sentence(docs.get(f.name, "")) or None,
                              None if default is MISSING else default)
            continue
        required = positional and default is MISSING
        if required:  # a positional argument
            metavar = f"{f.name} [{f.name} ...]" if typing.get_origin(tp) is list else f.name
        else:
            metavar = _metavar(tp)
        group.flags.append(_Flag(f.name if f.name in flat else prefix + f.name, metavar, _show_default(default),
                                 " ".join(docs.get(f.name, "").split()), required))
    return [group, *nested]


def _field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring, a subclass's over its base's."""
    import docstring_parser

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if is_dataclass(klass):
            docs.update({p.arg_name: p.description or "" for p in docstring_parser.parse_from_object(klass).params})
    return docs


def _field_default(f: Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def _metavar(tp) -> str:
    """INT, FLOAT, STR, {a,b} for a choice; nothing for a switch; [STR] for a switch that also
    takes a value (--resume, --resume PATH)."""
    if tp is bool:
        return ""
    if typing.get_origin(tp) is typing.Literal:
        return "{" + ",".join(map(str, typing.get_args(tp))) + "}"
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return "[STR]" if bool in args else _metavar(args[0])
    if typing.get_origin(tp) is list:
        return _metavar(typing.get_args(tp)[0]) + " ..."
    return getattr(tp, "__name__", str(tp)).upper()


def _show_default(value: Any) -> str | None:
    """The default as the flag takes it; none for a required flag, an unset one, a switch that is off."""
    if value is MISSING or value is None or value is False:
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return " ".join(map(str, value)) or None
    return str(value) if value != "" else '""'


def _first_sentence(text: str) -> str:
    """The whole first sentence of a docstring (a title or a flag's summary), whatever its line breaks."""
    text = " ".join(text.split())
    for match in re.finditer(r"[.!?](?=\s)", text):
        if not text[:match.end()].endswith(_ABBREVIATIONS):
            return text[:match.end()]
    return text


def _without_asides(sentence: str) -> str:
    """The sentence without its parenthesised asides: Clip the norm to this (None: no
    clipping). becomes Clip the norm to this."""
    out, depth = [], 0
    for ch in sentence:
        depth += ch == "("
        if depth == 0:
            out.append(ch)
        depth -= ch == ")" and depth > 0
    short = re.sub(r"\s+([.,;:])(?=\s|$)", r"\1", " ".join("".join(out).split()))
    return short if short.strip(" .") else sentence


# ---- layout --------------------------------------------------------------------------------


def _rows(rows: list[tuple[str, str]], width: int) -> list[str]:
    """Two columns: the flag, and its description wrapped beside it (below it, when the flag is
    wider than its column)."""
    lines = []
    right = max(width - _LEFT, 30)
    for left, text in rows:
        wrapped = textwrap.wrap(text, right) or [""]
        head = f"  {left}"
        if len(head) >= _LEFT:
            lines.append(head)
        else:
            lines.append(f"{head:<{_LEFT}}{wrapped.pop(0)}")
        lines += [" " * _LEFT + w for w in wrapped]
    return lines


def _wrap_long(lines: list[str], width: int) -> list[str]:
    """Paragraphs given as one long line, wrapped to the width."""
    out = []
    for line in lines:
        out += textwrap.wrap(line, width) if len(line) > width and not line.startswith(" ") else [line]
    return out
