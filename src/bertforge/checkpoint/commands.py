"""`bertforge convert` and `bertforge info`: the checkpoint commands."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bertforge.checkpoint.formats import FORMATS, TARGETS
from bertforge.checkpoint.load import load_checkpoint
from bertforge.checkpoint.save import prepare_destination, save_checkpoint_as
from bertforge.errors import ConfigError


@dataclass
class ConvertArgs:
    """Convert a checkpoint (format detected: bertforge, Hugging Face, Google TF, NVIDIA DLE)."""

    src: str
    """The checkpoint: a directory, a weights file, a TF checkpoint prefix (bert_model.ckpt), or a
    Hugging Face Hub model id (bert-base-uncased, user/model)."""
    dst: str
    """The output directory."""
    to: Literal[TARGETS] = "native"
    """native (bertforge: safetensors + config.json + bertforge.json) or hf (transformers' layout)."""
    bert_model: str | None = None
    """The source's bert_config.json when it is not beside the checkpoint (also --bert_config_file)."""
    vocab_file: str | None = None
    """A vocab.txt to ship with the result when the source has none beside it."""
    do_lower_case: bool | None = None
    """Record the casing when the source does not (Google TF checkpoints rarely do)."""
    format: Literal[("auto", *FORMATS)] = "auto"
    """Force the source format instead of detecting it."""
    force: bool = False
    """Replace the checkpoint in a non-empty destination (its checkpoint files are removed first;
    any other file there is an error, never deleted)."""


@dataclass
class InfoArgs:
    """Print what a checkpoint holds."""

    checkpoint: str
    """A checkpoint directory, weights file, TF checkpoint prefix, or Hugging Face Hub model id."""
    bert_model: str | None = None
    """The bert_config.json when it is not beside the checkpoint (also --bert_config_file)."""
    json: bool = False
    """Print one JSON object instead of text."""


def convert(args: ConvertArgs) -> Path:
    dst = Path(args.dst)
    given = (Path(args.src), Path(args.vocab_file) if args.vocab_file else None)
    prepare_destination(dst, args.force, needed=given)  # refuse before the (slow) read of the source
    ckpt = load_checkpoint(args.src, config=args.bert_model, format=args.format)
    if args.vocab_file:
        if not Path(args.vocab_file).is_file():
            raise ConfigError(f"vocab file not found: {args.vocab_file}")
        ckpt.vocab_file = Path(args.vocab_file)
    if args.do_lower_case is not None:
        ckpt.do_lower_case = args.do_lower_case
    out = save_checkpoint_as(ckpt, dst, to=args.to, overwrite=args.force)
    print(f"converted {ckpt.format} checkpoint {args.src} -> {args.to} {out} "
          f"({sum(v.numel() for v in ckpt.state.values()) / 1e6:.1f}M values"
          f"{', no vocab.txt: pass --vocab_file' if ckpt.vocab_file is None else ''})")
    return out


def info(args: InfoArgs) -> dict:
    ckpt = load_checkpoint(args.checkpoint, config=args.bert_model)
    dtypes = Counter(str(v.dtype).removeprefix("torch.") for v in ckpt.state.values())
    n_params = sum(v.numel() for v in ckpt.state.values())
    summary = {
        "checkpoint": str(ckpt.source), "format": ckpt.format,
        "parameters": n_params, "tensors": len(ckpt.state),
        "dtype": dtypes.most_common(1)[0][0] if dtypes else None, "dtypes": dict(dtypes),
        "heads": sorted(ckpt.heads) or ["none (encoder only)"],
        "labels": ckpt.labels, "num_labels": ckpt.num_labels,
        "vocab_file": str(ckpt.vocab_file) if ckpt.vocab_file else None,
        "do_lower_case": ckpt.do_lower_case, "config": ckpt.config.to_dict(),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return summary
    width = shutil.get_terminal_size((100, 20)).columns
    print(f"{summary['checkpoint']} ({summary['format']})")
    print(f"  parameters : {n_params:,} ({n_params / 1e6:.1f}M) in {len(ckpt.state)} tensors")
    print(f"  dtype      : {', '.join(f'{k} x{v}' for k, v in dtypes.items())}")
    print(f"  heads      : {', '.join(summary['heads'])}"
          + (f" (labels: {', '.join(ckpt.labels)})" if ckpt.labels else ""))
    print(f"  vocab      : {summary['vocab_file'] or 'none beside it'}; do_lower_case: {ckpt.do_lower_case}")
    print("  config     : " + json.dumps(summary["config"])[: max(40, width - 15)])
    return summary
