"""The second pass of `rewrite_argv`: values the reference scripts spell differently, and flags
whose meaning depends on the family of the command line (NVIDIA's per-optimizer-step batch,
Google's pretraining optimisation, NVIDIA's --bert_model names, Google's release names, the
families' Adam without bias correction). See `bertforge.compat.flags`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from bertforge.compat import flags as refs

# Flags that name no config field but carry a value the second pass needs (Google's warmup steps,
# NVIDIA's --steps_this_run): kept under this prefix, and gone from the rewritten command line.
HIDDEN = "__"


@dataclass
class Flag:
    """One flag of the rewritten command line: `--dotted=value`, `--dotted value` or `--dotted`."""

    dotted: str
    value: str | None
    eq: bool = True
    given_as: str = ""  # the name the user wrote, for messages

    def tokens(self) -> list[str]:
        if self.value is None:
            return [f"--{self.dotted}"]
        return [f"--{self.dotted}={self.value}"] if self.eq else [f"--{self.dotted}", self.value]


class CommandLine:
    """The command line being rewritten: config flags, and tokens passed through as given.
    Where a flag is given twice the parser takes the last, so `given` and `value_of` do too."""

    def __init__(self) -> None:
        self.items: list[Flag | str] = []

    def flags(self) -> list[Flag]:
        return [f for f in self.items if isinstance(f, Flag)]

    def given(self) -> dict[str, Flag]:
        return {f.dotted: f for f in self.flags()}

    def value_of(self, dotted: str) -> str | None:
        f = self.given().get(dotted)
        return f.value if f is not None else None

    def put(self, dotted: str, value: str) -> None:
        f = self.given().get(dotted)
        if f is not None:
            f.value = value
        else:
            self.items.append(Flag(dotted, value))

    def drop(self, dotted: str) -> None:
        self.items = [f for f in self.items if not (isinstance(f, Flag) and f.dotted == dotted)]

    def tokens(self) -> list[str]:
        out: list[str] = []
        for f in self.items:
            out.extend(f.tokens() if isinstance(f, Flag) else [f])
        return out


def rewrite_values(line: CommandLine, aliases: dict, nvidia: bool, notes: list[str], errors: list[str],
                   google: bool = False) -> None:
    """Rewrite `line` in place; `nvidia`: the command line is NVIDIA's PyTorch scripts (one of
    `flags.NVIDIA_MARKERS` is on it), whose --train_batch_size is per optimizer step; `google`:
    it is Google's scripts (one of `flags.GOOGLE_MARKERS`, none of NVIDIA's)."""
    _spellings(line, errors)
    _steps_this_run(line, errors)
    _model_name(line, aliases, notes)
    _release_casing(line, aliases, notes)
    _output_file(line, notes, errors)
    if nvidia:
        _nvidia_batch(line, notes, errors)
    pretraining = "data.input_dir" in aliases
    google_pretraining = pretraining and any(f.given_as in refs.GOOGLE_PRETRAINING_MARKERS or
                                             f.dotted == HIDDEN + "num_warmup_steps" for f in line.given().values())
    if google_pretraining:
        _google_pretraining(line, notes, errors)
    elif pretraining and line.value_of(HIDDEN + "warmup_steps") is not None:
        _warmup_steps(line, notes, errors)
    if "train.adam_bias_correction" in aliases and (pretraining or line.value_of("do_train") == "true"):
        _adam_bias_correction(line, notes, nvidia=nvidia and not pretraining,
                              google=(google and not pretraining) or google_pretraining)
    line.items = [f for f in line.items if not (isinstance(f, Flag) and f.dotted.startswith(HIDDEN))]


def bool_word(value: str) -> str:
    """absl's and the shell scripts' spellings of a boolean, as the parser reads them."""
    low = value.lower()
    if low in ("true", "1", "yes", "t", "y"):
        return "true"
    if low in ("false", "0", "no", "f", "n"):
        return "false"
    if low in ("none", "null"):
        return "null"
    return value  # let the parser reject it with its own message


def same_value(value: str, allowed: str) -> bool:
    """`value` is `allowed`, compared as numbers or as boolean words."""
    try:
        return float(value) == float(allowed)
    except ValueError:
        return bool_word(value) == allowed


def _whole_number(text: str) -> int | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return int(number) if number.is_integer() else None


def _spellings(line: CommandLine, errors: list[str]) -> None:
    """--precision bfloat16 is bf16; step counts written as floats (7038.0) are whole numbers;
    NVIDIA's --max_steps -1 means no step limit."""
    for f in line.given().values():
        if f.value is None:
            continue
        leaf = f.dotted.rsplit(".", 1)[-1]
        if leaf == "precision" and f.value.lower() in refs.PRECISION_NAMES:
            f.value = refs.PRECISION_NAMES[f.value.lower()]
        elif leaf in ("max_steps", "log_every", "save_every") or f.dotted == HIDDEN + "steps_this_run":
            number = _whole_number(f.value)
            if number is None:
                errors.append(f"--{f.given_as or leaf} {f.value}: expected a whole number of steps")
            elif leaf == "max_steps" and number <= 0:
                f.value = "null"  # NVIDIA's -1: no step limit (the epochs decide)
            else:
                f.value = str(number)


def _steps_this_run(line: CommandLine, errors: list[str]) -> None:
    """NVIDIA's --steps_this_run stops a run early; bertforge runs to --max_steps."""
    steps_this_run = line.value_of(HIDDEN + "steps_this_run")
    line.drop(HIDDEN + "steps_this_run")
    if (steps_this_run is not None and steps_this_run.isdigit() and int(steps_this_run) > 0
            and steps_this_run != line.value_of("train.max_steps")):
        errors.append(f"--steps_this_run {steps_this_run}: bertforge runs to --max_steps; stop a run early "
                      f"and continue it with --save_every N and --resume")


def _model_name(line: CommandLine, aliases: dict, notes: list[str]) -> None:
    """NVIDIA's --bert_model bert-large-uncased: a preset that implies the casing. A config file
    (--config_file / --bert_config_file) gives the architecture instead, whatever the order."""
    if "model.bert_model" not in aliases:
        return
    model = [f for f in line.flags() if f.dotted == "model.bert_model"]
    files = [f for f in model if f.given_as in ("config_file", "bert_config_file")]
    named = [f for f in model if f not in files and f.value in refs.MODEL_NAMES]
    if not named:
        return
    name = named[-1].value
    size, uncased = refs.MODEL_NAMES[name]
    keep = files[-1] if files else named[-1]
    from_checkpoint = not files and any(f.dotted == "model.init_checkpoint" for f in line.flags())
    for f in model:
        if f is not keep or from_checkpoint:
            line.items.remove(f)
    if keep is named[-1]:
        keep.value = size
    if not any(f.dotted == "model.do_lower_case" for f in line.flags()):
        line.items.append(Flag("model.do_lower_case", "true" if uncased else "false"))
        notes.append(f"--bert_model {name}: do_lower_case={str(uncased).lower()} from the name"
                     + (f"; the architecture from --{keep.given_as}" if files else
                        "; the architecture from --init_checkpoint" if from_checkpoint else ""))


def _release_casing(line: CommandLine, aliases: dict, notes: list[str]) -> None:
    """Without a casing flag, Google's release names (uncased_L-24_H-1024_A-16/vocab.txt, a
    checkpoint in cased_L-12_H-768_A-12/) say it, as run_squad.py's own check reads them."""
    if "do_lower_case" not in aliases:
        return
    target = aliases["do_lower_case"][0]
    if line.value_of(target) is not None:
        return
    for f in line.flags():
        leaf = f.dotted.rsplit(".", 1)[-1]
        if leaf not in ("init_checkpoint", "vocab_file", "bert_model", "checkpoint", "src") or not f.value:
            continue
        path = Path(f.value)
        for name in (path.parent.name, path.name):
            match = re.fullmatch(refs.GOOGLE_RELEASE, name)
            if match:
                uncased = match.group(1) in refs.GOOGLE_RELEASE_UNCASED
                line.items.append(Flag(target, str(uncased).lower()))
                notes.append(f"--{f.given_as or leaf} {f.value}: do_lower_case={str(uncased).lower()} from "
                             f"Google's release name {name}")
                return


def _adam_bias_correction(line: CommandLine, notes: list[str], nvidia: bool, google: bool) -> None:
    """Google's AdamWeightDecayOptimizer and NVIDIA's fine-tuning optimizers (BertAdam,
    FusedAdam(bias_correction=False)) run Adam without bias correction; bertforge's AdamW has it
    unless told otherwise."""
    if line.value_of("train.adam_bias_correction") is not None or line.value_of("train.optimizer") not in (
            None, "adamw"):
        return
    if google:
        who = "Google's AdamWeightDecayOptimizer"
    elif nvidia:
        who = "NVIDIA's fine-tuning (BertAdam, FusedAdam(bias_correction=False))"
    else:
        return
    line.put("train.adam_bias_correction", "false")
    notes.append(f"{who} runs Adam without bias correction: --adam_bias_correction false")


def _output_file(line: CommandLine, notes: list[str], errors: list[str]) -> None:
    """create_pretraining_data.py's --output_file names one TFRecord file; bertforge writes a
    directory of shards."""
    for f in [f for f in line.flags() if f.given_as == "output_file"]:
        if f.value and ("," in f.value or Path(f.value).suffix.lower() in (".tfrecord", ".tfrecords", ".hdf5", ".h5")):
            errors.append(f"--output_file {f.value}: bertforge writes a directory of shards, not a TFRecord/HDF5 "
                          f"file; pass --output_dir DIR (bertforge pretrain --input_dir DIR reads it)")
        else:
            notes.append(f"--output_file {f.value}: written as a directory of shards (pretrain --input_dir reads it)")


def _nvidia_batch(line: CommandLine, notes: list[str], errors: list[str]) -> None:
    """NVIDIA's --train_batch_size N is per device per optimizer step; with
    --gradient_accumulation_steps K its scripts train micro-batches of N / K."""
    batch, accumulation = line.value_of("train.train_batch_size"), line.value_of("train.gradient_accumulation_steps")
    if batch is None or accumulation is None or \
            line.given()["train.gradient_accumulation_steps"].given_as != "gradient_accumulation_steps":
        return
    try:
        n, k = int(batch), int(accumulation)
    except ValueError:
        return  # the parser reports the value
    if k <= 1:
        return
    if line.value_of("train.global_batch_size") is not None:
        errors.append("--global_batch_size with NVIDIA's --train_batch_size and --gradient_accumulation_steps: "
                      "give one spelling of the batch")
        return
    if n % k:
        errors.append(f"NVIDIA's --train_batch_size {n} is per optimizer step and must divide by "
                      f"--gradient_accumulation_steps {k}; in bertforge's terms give "
                      f"--train.train_batch_size MICRO --train.gradient_accumulation_steps {k} "
                      f"(global = MICRO x devices x {k}) or --global_batch_size")
        return
    line.put("train.train_batch_size", str(n // k))
    notes.append(f"--train_batch_size {n} --gradient_accumulation_steps {k}: NVIDIA's batch is per optimizer "
                 f"step, so micro-batches of {n // k} (bertforge: --train.train_batch_size {n // k} "
                 f"--train.gradient_accumulation_steps {k}, or --global_batch_size {n} x devices)")


def _google_pretraining(line: CommandLine, notes: list[str], errors: list[str]) -> None:
    """Google's run_pretraining.py: AdamWeightDecay, linear (poly power 1) decay to 0 over all
    steps, warmup counted in steps (MLPerf adds --optimizer and --poly_power), its step defaults,
    and --do_eval on the training files when no evaluation set is named."""
    if line.value_of("train.optimizer") is None:
        line.put("train.optimizer", "adamw")
    line.put("train.schedule", "poly")
    if line.value_of("train.schedule_power") is None:
        line.put("train.schedule_power", "1.0")
    _google_eval(line, notes)
    warmup = line.given().get(HIDDEN + "num_warmup_steps")
    steps = line.value_of("train.max_steps")
    if warmup is None:
        warmup_steps = refs.GOOGLE_DEFAULT_WARMUP_STEPS
    else:
        warmup_steps = _whole_number(warmup.value or "")
        if warmup_steps is None or warmup_steps < 0:
            errors.append(f"--num_warmup_steps {warmup.value}: expected a whole number of steps")
            return
    if steps is None or steps == "null":
        if warmup is not None:
            errors.append("--num_warmup_steps counts steps: give --num_train_steps (or --max_steps) too")
            return
        steps = str(refs.GOOGLE_DEFAULT_TRAIN_STEPS)
        line.put("train.max_steps", steps)
        notes.append(f"no --num_train_steps: run_pretraining.py's default, {steps} steps")
    line.put("train.warmup_proportion", repr(min(1.0, warmup_steps / int(steps))))
    notes.append(f"Google's run_pretraining flags: AdamW with linear decay over {steps} steps, "
                 f"{min(warmup_steps, int(steps))} warmup steps (--optimizer lamb for LAMB)")


def _google_eval(line: CommandLine, notes: list[str]) -> None:
    """run_pretraining.py --do_eval evaluates on --input_file itself (max_eval_steps batches of
    eval_batch_size) when no other data is named; so does bertforge for data that has no
    held-out split of its own."""
    if line.value_of("do_eval") != "true" or line.value_of("data.eval_dir") is not None:
        return
    line.put("data.eval_on_train", "true")
    if line.value_of("data.max_eval_samples") is None:
        steps = _whole_number(line.value_of(HIDDEN + "max_eval_steps") or "") or refs.GOOGLE_EVAL_STEPS
        batch = _whole_number(line.value_of("data.eval_batch_size") or "") or refs.GOOGLE_EVAL_BATCH
        line.put("data.max_eval_samples", str(steps * batch))
        notes.append(f"--do_eval: on {steps * batch} samples (run_pretraining.py's {steps} eval steps of {batch}); "
                     f"on the training files, as run_pretraining.py does, when no --eval_dir is given and the "
                     f"data has no held-out split")


def _warmup_steps(line: CommandLine, notes: list[str], errors: list[str]) -> None:
    """NVIDIA's MLPerf PyTorch run_pretraining.py --warmup_steps: warmup counted in steps."""
    given = line.value_of(HIDDEN + "warmup_steps") or ""
    warmup_steps, steps = _whole_number(given), _whole_number(line.value_of("train.max_steps") or "")
    if warmup_steps is None or warmup_steps < 0:
        errors.append(f"--warmup_steps {given}: expected a whole number of steps")
    elif steps is None or steps <= 0:
        errors.append("--warmup_steps counts steps: give --max_steps too")
    else:
        line.put("train.warmup_proportion", repr(min(1.0, warmup_steps / steps)))
        notes.append(f"--warmup_steps {warmup_steps}: warmup_proportion {min(1.0, warmup_steps / steps):.4g} "
                     f"of {steps} steps")
