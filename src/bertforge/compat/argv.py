"""`rewrite_argv`: a reference recipe's command line as bertforge's parser reads it.

Two passes. The first reads the flags one by one: flat names and aliases become dotted names,
absl booleans become `--flag=true|false`, switches set their fields, knobs that change nothing
here become notes, refused values become errors. The second (`bertforge.compat.values`) rewrites
values whose meaning depends on the rest of the command line.
"""

from __future__ import annotations

import re
import types
import typing
from dataclasses import fields, is_dataclass
from typing import NamedTuple, Sequence

from bertforge.compat import flags as refs
from bertforge.compat.values import HIDDEN, CommandLine, Flag, bool_word, rewrite_values, same_value
from bertforge.errors import ConfigError

BOOL_WORDS = {"true", "false", "1", "0", "yes", "no", "t", "f", "y", "n"}
# What argparse takes for a negative number rather than a flag (its _negative_number_matcher).
_NEGATIVE_NUMBER = re.compile(r"-\d+|-\d*\.\d+")


class AliasTable(dict):
    """A flag's name -> (its dotted name, how it takes its value: "bool", "optional" or "value");
    `choices`: the values a field of a Literal type takes (dotted name -> values)."""

    def __init__(self, entries=(), choices: dict[str, tuple[str, ...]] | None = None) -> None:
        super().__init__(entries)
        self.choices = dict(choices or {})


class Rewritten(NamedTuple):
    """The parser's argv, and what the user should be told: reference flags accepted with
    another meaning here, or none."""

    argv: list[str]
    notes: list[str]


def unwrap_optional(tp):
    """X for X | None; any other annotation as it is."""
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
        tp = unwrap_optional(hints[f.name])
        name = prefix + f.name
        if is_dataclass(tp):
            table.update(flag_table(tp, name + "."))
        else:
            table[name] = (name, _kind(tp))
    return table


def choice_table(cls: type, prefix: str = "") -> dict[str, tuple[str, ...]]:
    """Every leaf field of a Literal type: dotted name -> the values it takes."""
    table = {}
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        tp = unwrap_optional(hints[f.name])
        if is_dataclass(tp):
            table.update(choice_table(tp, f"{prefix}{f.name}."))
        elif typing.get_origin(tp) is typing.Literal:
            table[prefix + f.name] = tuple(map(str, typing.get_args(tp)))
    return table


def alias_table(cls: type) -> AliasTable:
    """Flat names (and `flags.ALIASES`) -> (dotted name, kind), for names unique in the config."""
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
    return AliasTable(aliases, choice_table(cls))


def rewrite_argv(argv: Sequence[str], aliases: AliasTable) -> Rewritten:
    """Rewrite reference-recipe flags into the parser's dotted flags, for the config whose
    `alias_table` is `aliases`. Tokens that name no flag pass through unchanged, for the parser
    to report. Raises ConfigError naming every refused value at once."""
    names = [t[2:].partition("=")[0] for t in argv if t.startswith("--") and len(t) > 2]
    nvidia = any(n in refs.NVIDIA_MARKERS for n in names)
    google = not nvidia and any(n in refs.GOOGLE_MARKERS for n in names)
    reader = _Reader(list(argv), aliases)
    reader.read()
    rewrite_values(reader.line, aliases, nvidia, reader.notes, reader.errors, google=google)
    if reader.errors:
        raise ConfigError("; ".join(reader.errors))
    positional = [reader.positional[name] for name in refs.POSITIONAL if name in reader.positional]
    return Rewritten(positional + reader.line.tokens(), reader.notes)


def take_launcher_flags(argv: list[str]) -> tuple[list[str], int | None, dict[str, int]]:
    """Flags for the process rather than the command, taken out wherever they stand:
    `--local_rank N` / `--local-rank=N` (torch.distributed.launch puts it before the command) and
    Intel's `--intra_op_parallelism_threads` / `--inter_op_parallelism_threads` (torch's pools)."""
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


def stray_bool_value(argv: Sequence[str], aliases: AliasTable, word: str) -> str | None:
    """What to say when the parser found `word` left over and it stands right after a boolean
    flag (`--do_lower_case maybe`): that flag takes true or false. None otherwise."""
    for i, token in enumerate(argv[1:], 1):
        before = argv[i - 1]
        if token != word or not before.startswith("--") or "=" in before:
            continue
        name, negated = _field_name(before[2:], aliases)
        if name in aliases and aliases[name][1] == "bool" and not negated:
            return f"--{before[2:]} takes true or false, got {word!r}"
    return None


def device_switch(argv: Sequence[str]) -> tuple[str, str] | None:
    """(the switch, the device) of a vendor switch that chose the device (`--use_habana`: hpu),
    unless a --device given after it overrides it; None when no switch chose it."""
    found = None
    for token in argv:
        name, eq, value = token[2:].partition("=") if token.startswith("--") else ("", "", "")
        device = refs.SWITCHES.get(name, {}).get("runtime.device")
        if device is not None and (not eq or bool_word(value) == "true"):
            found = (name, device)
        elif name in ("device", "runtime.device"):
            found = None
    return found


def suggestion(flag: str) -> str | None:
    """What an unknown reference flag stands for here, where a spelling match would mislead."""
    return refs.HINTS.get(flag.removeprefix("--"))


class _Reader:
    """The first pass: the flags of argv, one at a time, into a CommandLine."""

    def __init__(self, argv: list[str], aliases: AliasTable) -> None:
        self.argv, self.aliases = argv, aliases
        self.i = 0  # the next token
        self.line = CommandLine()
        self.notes: list[str] = []
        self.errors: list[str] = []
        self.precision: tuple[str, str] | None = None  # (switch, precision) of a --fp16/--bf16 seen
        self.positional: dict[str, str] = {}  # --tf_checkpoint_path X: convert's SRC, ...

    def read(self) -> None:
        while self.i < len(self.argv):
            token = self.argv[self.i]
            self.i += 1
            if not token.startswith("--") or token == "--":
                self.line.items.append(token)
                continue
            name, eq, value = token[2:].partition("=")
            if not self._reference_flag(name, bool(eq), value):
                self._field(token, name, bool(eq), value)

    def _next_value(self, eq: bool, value: str, bool_like: bool) -> str:
        """A reference flag's value: after '=', else the next token when it is one (a bool word,
        for a switch; anything but a flag, otherwise); a bare switch means true."""
        if eq:
            return value
        nxt = self.argv[self.i] if self.i < len(self.argv) else None
        if nxt is not None and (nxt.lower() in BOOL_WORDS if bool_like else not nxt.startswith("--")):
            self.i += 1
            return nxt
        return "true"

    def _reference_flag(self, name: str, eq: bool, value: str) -> bool:
        """The reference scripts' flags that name no config field of this command: switches,
        noted knobs, refused values, misplaced thread flags, Intel's --mode, and the values the
        second pass needs. False when `name` is none of these."""
        if not eq and _negated_switch(name, self.aliases):
            return True  # absl's --noamp: the switch's default, off
        if name in self.aliases:
            return False
        if name == "steps_this_run" or ("data.input_dir" in self.aliases and name in refs.PRETRAINING_STEPS):
            self.line.items.append(Flag(HIDDEN + name, self._next_value(eq, value, False), given_as=name))
        elif name in refs.POSITIONAL and refs.POSITIONAL[name] in self.aliases:
            self.positional[name] = self._next_value(eq, value, False)
        elif name in refs.SWITCHES:
            self._switch(name, bool_word(self._next_value(eq, value, True)) == "true")
        elif name in refs.NOTED:
            self._next_value(eq, value, False)
            self.notes.append(f"--{name}: {refs.NOTED[name]}")
        elif name in refs.REFUSED:
            allowed, reason = refs.REFUSED[name]
            value = self._next_value(eq, value, allowed in ("true", "false"))
            if not same_value(value, allowed):
                self.errors.append(f"--{name}={value}: {reason}")
        elif name in refs.THREAD_FLAGS:
            self.errors.append(f"--{name} sets a process-wide thread pool; give it before any other flag")
        elif name == "mode":
            self._mode(self._next_value(eq, value, False))
        else:
            return False
        return True

    def _switch(self, name: str, on: bool) -> None:
        """--fp16, --use_habana, ...: set their fields (precision switches must agree, except
        that a weak one such as --autocast yields to the others)."""
        if not on:
            return
        if name in refs.INFERENCE_SWITCHES and "do_train" in self.aliases:
            self.errors.append(f"--{name}: {refs.INFERENCE_SWITCHES[name]}")
            return
        for dotted, setting in refs.SWITCHES[name].items():
            if dotted not in self.aliases:
                continue
            if setting not in self.aliases.choices.get(dotted, (setting,)):
                self.errors.append(f"--{name}: this command does not run in {setting} yet "
                                   f"(its precisions: {', '.join(self.aliases.choices[dotted])})")
                continue
            if dotted.rsplit(".", 1)[-1] == "precision":
                # runtime.precision, else (export) precision: a flat `precision` may name the first too
                if self._precision_switch(name, setting):
                    self.line.items.append(Flag(dotted, setting, given_as=name))
                break
            self.line.items.append(Flag(dotted, setting, given_as=name))

    def _precision_switch(self, name: str, setting: str) -> bool:
        """Whether precision switch --name sets the precision: not when a switch seen before
        stands (a weak one never overrides; two strong ones must agree, else an error)."""
        if self.precision is None or self.precision[1] == setting:
            self.precision = (name, setting)
            return True
        seen = self.precision[0]
        if name in refs.WEAK_SWITCHES:
            return False
        if seen not in refs.WEAK_SWITCHES:
            self.errors.append(f"--{seen} and --{name} ask for different precisions "
                               f"({self.precision[1]}, {setting}); give one")
        self.line.items = [f for f in self.line.items if not (isinstance(f, Flag) and f.given_as == seen
                                                                and f.dotted.endswith("precision"))]
        self.precision = (name, setting)
        return True

    def _mode(self, value: str) -> None:
        """Intel's launchers pass --mode benchmark|accuracy|training|inference; the commands
        that take it have it as a field. training/inference must be what the command does."""
        trains = "do_train" in self.aliases
        if value not in refs.INTEL_MODES:
            self.errors.append(f"--mode {value}: this command has no mode (Intel's "
                               f"{'/'.join(refs.INTEL_MODES)} modes are accepted)")
        elif value == "training" and not trains:
            self.errors.append("--mode training: this command predicts; bertforge finetune ... trains")
        elif value == "inference" and "data.input_dir" in self.aliases:
            self.errors.append("--mode inference: pretraining trains; bertforge predict ... predicts")
        elif value == "inference" and trains:
            self.notes.append("--mode inference: without --do_train this command only predicts")
        else:
            self.notes.append(f"--mode {value}: {refs.INTEL_MODES[value]}")

    def _field(self, token: str, name: str, eq: bool, value: str) -> None:
        """A config field by its dotted, flat or reference name; booleans absl style
        (--flag, --flag=false, --flag false, --noflag, --no-flag)."""
        name, negated = _field_name(name, self.aliases)
        if name not in self.aliases:
            self.line.items.append(token)  # the parser names it as unknown
            return
        dotted, kind = self.aliases[name]
        if kind == "bool" or (kind == "optional" and (negated or not eq)):
            value = "false" if negated else value if eq else self._bare_bool_value(kind)
            self.line.items.append(Flag(dotted, bool_word(value), given_as=name))
        elif eq:
            self.line.items.append(Flag(dotted, value, given_as=name))
        elif self.i < len(self.argv) and not self.argv[self.i].startswith("--"):
            # a negative number in exponent form (-1e-3) would read as a flag to the parser
            nxt = self.argv[self.i]
            eq = nxt.startswith("-") and not _NEGATIVE_NUMBER.fullmatch(nxt)
            self.line.items.append(Flag(dotted, nxt, eq=eq, given_as=name))
            self.i += 1
        else:
            self.line.items.append(Flag(dotted, None, given_as=name))

    def _bare_bool_value(self, kind: str) -> str:
        """absl: a bare --flag means true; a following true/false is its value (and, for an
        optional-value flag, any other word that is not a flag)."""
        nxt = self.argv[self.i] if self.i < len(self.argv) else None
        if nxt is not None and (nxt.lower() in BOOL_WORDS or (kind == "optional" and not nxt.startswith("-"))):
            self.i += 1
            return nxt
        return "true"


def _negated_switch(name: str, aliases: AliasTable) -> bool:
    """--noamp, --no-fp16, --no_use_habana: a switch (not a field here) turned off."""
    return any(name.startswith(p) and name[len(p):] in refs.SWITCHES and name[len(p):] not in aliases
               for p in ("no-", "no_", "no"))


def _spelled_as_field(name: str, aliases: AliasTable) -> str:
    """--compare-hf is --compare_hf: dashes for underscores, where that names a field."""
    underscored = name.replace("-", "_")
    return underscored if name not in aliases and underscored in aliases else name


def _field_name(name: str, aliases: AliasTable) -> tuple[str, bool]:
    """The alias a flag names, and whether it is negated (--nodo_lower_case, --no-compile:
    boolean and optional-value fields only)."""
    name = _spelled_as_field(name, aliases)
    if name in aliases:
        return name, False
    for prefix in ("no-", "no_", "no"):
        stem = _spelled_as_field(name[len(prefix):], aliases)
        if name.startswith(prefix) and stem in aliases and aliases[stem][1] in ("bool", "optional"):
            return stem, True
    return name, False
