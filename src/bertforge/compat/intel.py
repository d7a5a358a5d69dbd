"""Intel Model Zoo's `launch_benchmark.py` (BERT-large: SQuAD and MRPC fine-tuning, SQuAD
inference in benchmark, accuracy and profile modes, pretraining) as the bertforge command that
does the same: `bertforge launch_benchmark --model-name=bert_large ... -- key=value ...`.

`launch_benchmark(argv)` is pure: it returns the bertforge command line, the notes to show, and
the number of processes the recipe asked for (`--mpi_num_processes`), which bertforge leaves to
torchrun. The launcher's own flags (before `--`) are read here; the model's `key=value`
arguments after it become `--key=value` flags of the bertforge command, which reads them as it
reads Google's (Intel's TensorFlow BERT is Google's run_squad.py / run_classifier.py /
run_pretraining.py). Its defaults are Intel's: the inference files come from --data-location
(bert_config.json, vocab.txt, dev-v1.1.json) and the fine-tuned checkpoint from --checkpoint
(model.ckpt-7299).
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Sequence

from bertforge.errors import ConfigError

# The names the command takes, as `bertforge launch_benchmark` or the script's own name.
COMMAND_NAMES = ("launch_benchmark", "launch_benchmark.py")

# The launcher's flags that take a value, and those that are switches (dashes as underscores).
_VALUED = {"model_name", "framework", "precision", "mode", "batch_size", "checkpoint", "data_location",
           "output_dir", "docker_image", "volume", "socket_id", "mpi_num_processes",
           "mpi_num_processes_per_socket", "host_file", "num_intra_threads", "num_inter_threads",
           "num_cores", "dataset_name"}
_SWITCHES = {"benchmark_only", "accuracy_only", "verbose"}
_NOT_HERE = {"docker_image": "no container is started: run bertforge where its files are",
             "volume": "no container is started: run bertforge where its files are",
             "socket_id": "bertforge does not pin processes to sockets: use numactl --cpunodebind",
             "num_cores": "torch's thread pools: --num-intra-threads",
             "mpi_num_processes_per_socket": "bertforge does not pin processes to sockets",
             "host_file": "torchrun --nnodes N --rdzv_endpoint HOST:PORT on each host",
             "verbose": "bertforge logs at INFO", "dataset_name": "the data files are given as paths"}
_PRECISIONS = {"fp32": "fp32", "bfloat16": "bf16", "bf16": "bf16", "fp16": "fp16", "float16": "fp16"}
# Model arguments spelled otherwise by the bertforge commands (Google's names).
_MODEL_ARGS = {"config_file": "bert_config_file", "max_predictions": "max_predictions_per_seq",
               "warmup_steps": "num_warmup_steps", "accum_steps": "num_accumulation_steps"}
# Intel's defaults for inference: files in --data-location (model argument -> bertforge's flag,
# file name) and the checkpoint in --checkpoint.
INFERENCE_FILES = {"config_file": ("bert_config_file", "bert_config.json"), "vocab_file": ("vocab_file", "vocab.txt"),
                   "predict_file": ("predict_file", "dev-v1.1.json")}
DEFAULT_CHECKPOINT = "model.ckpt-7299"
TRACE_FILE = "bert_large_trace.json"


@dataclass
class Translated:
    """The bertforge command line that does what a launch_benchmark.py command line does."""

    command: list[str]  # bertforge's argv: command words, then flags
    notes: list[str] = field(default_factory=list)
    processes: int = 1  # --mpi_num_processes: run under torchrun --nproc_per_node this many

    def command_line(self) -> str:
        """The command as a user types it (under torchrun when the recipe asked for processes)."""
        prefix = ["torchrun", "--nproc_per_node", str(self.processes), "--no-python"] if self.processes > 1 else []
        return shlex.join([*prefix, "bertforge", *self.command])


def launch_benchmark(argv: Sequence[str]) -> Translated:
    """The bertforge command of a launch_benchmark.py command line (without the script's name).
    ConfigError naming every flag it cannot honour."""
    argv = list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    launcher, errors, notes = _launcher_flags(argv[:split])
    model_args = _model_args(argv[split + 1:], errors)
    if launcher.get("model_name", "").split("_")[0] != "bert":
        errors.append(f"--model-name {launcher.get('model_name')!r}: bertforge runs BERT (bert_large, bert_base)")
    mode = launcher.get("mode")
    if mode not in ("training", "inference"):
        errors.append(f"--mode {mode!r}: launch_benchmark's modes are training and inference")
    precision = launcher.get("precision", "fp32")
    if precision not in _PRECISIONS and precision != "int8":
        errors.append(f"--precision {precision}: bertforge runs fp32, bfloat16, fp16 (and int8 for inference)")
    if errors:
        raise ConfigError("launch_benchmark: " + "; ".join(errors))
    if launcher.get("framework", "tensorflow") != "pytorch":
        notes.append(f"--framework {launcher.get('framework', 'tensorflow')}: bertforge is PyTorch; it reads "
                     f"TensorFlow checkpoints as they are")
    flags = ["--int8" if precision == "int8" else f"--precision={_PRECISIONS[precision]}"]
    if mode == "training":
        command = _training(launcher, model_args, flags, notes)
    else:
        command = _inference(launcher, model_args, flags, notes)
    # torch's thread pools, which the CLI takes from anywhere on the line
    command += [f"--{key}={launcher[key]}" for key in ("num_intra_threads", "num_inter_threads") if key in launcher]
    processes = int(launcher.get("mpi_num_processes", 1))
    if processes > 1:
        command = _scaled_learning_rate(command, processes, notes)
    return Translated(command, notes, processes)


def _launcher_flags(argv: list[str]) -> tuple[dict[str, str], list[str], list[str]]:
    """The launcher's flags before `--`: {name: value}, errors, notes."""
    found: dict[str, str] = {}
    errors: list[str] = []
    notes: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if not token.startswith("--"):
            errors.append(f"{token!r}: launch_benchmark's model arguments go after `--`")
            continue
        name, eq, value = token[2:].partition("=")
        key = name.replace("-", "_")
        if key in _SWITCHES:
            found[key] = "true"
        elif key in _VALUED:
            if not eq:
                value = argv[i] if i < len(argv) else ""
                i += 1
            found[key] = value
        else:
            errors.append(f"--{name}: not a launch_benchmark flag bertforge knows (--in-graph frozen graphs and "
                          f"--gpu are not supported)")
    for key in found:
        if key in _NOT_HERE:
            notes.append(f"--{key.replace('_', '-')}: {_NOT_HERE[key]}")
    for key in ("batch_size", "mpi_num_processes"):
        if key in found and not found[key].isdigit():
            errors.append(f"--{key.replace('_', '-')} takes a whole number, got {found[key]!r}")
    return found, errors, notes


def _model_args(argv: list[str], errors: list[str]) -> dict[str, str]:
    """The `key=value` model arguments after `--` (dashes in keys as underscores)."""
    found = {}
    for token in argv:
        key, eq, value = token.partition("=")
        if not eq or not key:
            errors.append(f"{token!r}: model arguments after `--` are key=value")
            continue
        found[key.replace("-", "_")] = value
    return found


def _flags(args: dict[str, str], notes: list[str]) -> list[str]:
    """Model arguments as the bertforge command's flags, in Google's spellings."""
    out = []
    for key, value in args.items():
        if key.isupper():  # an environment setting (DEBIAN_FRONTEND=noninteractive)
            notes.append(f"{key}={value}: an environment setting, not a model argument")
            continue
        out.append(f"--{_MODEL_ARGS.get(key, key)}={value}")
    return out


def _training(launcher: dict[str, str], args: dict[str, str], flags: list[str],
              notes: list[str]) -> list[str]:
    option = args.pop("train_option", "SQuAD").lower()
    words = {"squad": ["finetune", "squad"], "classifier": ["finetune", "glue"], "pretraining": ["pretrain"]}
    if option not in words:
        raise ConfigError(f"launch_benchmark: train_option={option}: bertforge trains SQuAD, Classifier "
                          f"(GLUE) and Pretraining")
    if "output_dir" not in args and "output_dir" in launcher:
        args["output_dir"] = launcher["output_dir"]
    if args.pop("profile", "false").lower() == "true":
        notes.append("profile=True: training is not profiled; bertforge benchmark --profile writes a "
                     "torch.profiler trace of the training step")
    command = [*words[option], *_flags(args, notes), *flags]
    if "batch_size" in launcher:
        command.append(f"--train_batch_size={launcher['batch_size']}")
    return command


def _inference(launcher: dict[str, str], args: dict[str, str], flags: list[str],
               notes: list[str]) -> list[str]:
    option = args.pop("infer_option", "SQuAD").lower()
    if option != "squad":
        raise ConfigError(f"launch_benchmark: infer_option={option}: bertforge's inference recipe is SQuAD "
                          f"(GLUE: bertforge evaluate glue)")
    data = PurePath(launcher.get("data_location", "."))
    checkpoint = PurePath(launcher.get("checkpoint", "."))
    files = {flag: str(data / args.pop(key, name)) for key, (flag, name) in INFERENCE_FILES.items()}
    files["init_checkpoint"] = str(checkpoint / args.pop("init_checkpoint", DEFAULT_CHECKPOINT))
    output_dir = launcher.get("output_dir", "output")
    profile = args.pop("profile", "false").lower() == "true"
    if profile:
        return _profile(launcher, args, files, flags, output_dir, notes)
    command = ["predict", "squad", *(f"--{k}={v}" for k, v in files.items()), f"--output_dir={output_dir}",
               *_flags(args, notes), *flags]
    if "batch_size" in launcher:
        command.append(f"--predict_batch_size={launcher['batch_size']}")
    if launcher.get("benchmark_only") == "true":
        command.append("--do_eval=false")
        notes.append("--benchmark-only: throughput and p50/p99 latency in the results and metrics.jsonl; "
                     "no scoring")
    if launcher.get("accuracy_only") == "true":
        command.append("--do_eval=true")
    return command


def _profile(launcher: dict[str, str], args: dict[str, str], files: dict[str, str], flags: list[str],
             output_dir: str, notes: list[str]) -> list[str]:
    """profile=True: bertforge benchmark profiles SQuAD inference (a torch.profiler trace)."""
    trace = str(PurePath(output_dir) / TRACE_FILE)
    notes.append(f"profile=True: bertforge benchmark profiles inference on {files['predict_file']} and writes the "
                 f"torch.profiler trace {trace}")
    command = ["benchmark", "--mode=infer", "--task=qa", "--data=squad", f"--squad_file={files['predict_file']}",
               f"--init_checkpoint={files['init_checkpoint']}", f"--bert_config_file={files['bert_config_file']}",
               f"--vocab_file={files['vocab_file']}", f"--seq_length={args.pop('max_seq_length', '384')}",
               "--profile", f"--trace_file={trace}", *_flags(args, notes), *flags]
    if "batch_size" in launcher:
        command.append(f"--batch_size={launcher['batch_size']}")
    return command


def _scaled_learning_rate(command: list[str], processes: int, notes: list[str]) -> list[str]:
    """Intel's launcher scales the learning rate by sqrt(processes) under MPI; the torchrun
    line it is answered with does the same."""
    out = []
    for token in command:
        name, eq, value = token.partition("=")
        if name == "--learning_rate" and eq:
            try:
                scaled = float(value) * math.sqrt(processes)
            except ValueError:
                out.append(token)
                continue
            notes.append(f"--mpi_num_processes {processes}: learning rate {value} x sqrt({processes}) = {scaled:.4g}, "
                         f"as launch_benchmark.py scales it; global batch = {processes} x the per-process batch")
            token = f"--learning_rate={scaled:.6g}"
        out.append(token)
    return out
