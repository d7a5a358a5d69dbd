"""`bertforge convert` and `bertforge info`: the checkpoint commands (their flags: `args`)."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

from bertforge.checkpoint.args import ConvertArgs, InfoArgs
from bertforge.checkpoint.load import load_checkpoint
from bertforge.checkpoint.save import prepare_destination, save_checkpoint_as
from bertforge.errors import ConfigError


# A destination with one of these suffixes is one weights file, as transformers' conversion
# script (convert_bert_original_tf_checkpoint_to_pytorch.py --pytorch_dump_path) writes it.
WEIGHTS_FILE_SUFFIXES = (".pt", ".pth", ".bin")


def convert(args: ConvertArgs) -> Path:
    dst = Path(args.dst)
    given = (Path(args.src), Path(args.vocab_file) if args.vocab_file else None)
    if dst.suffix in WEIGHTS_FILE_SUFFIXES:
        return _convert_to_file(args, dst)
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


def _convert_to_file(args: ConvertArgs, dst: Path) -> Path:
    """The source's weights as one torch file with transformers' names (BertForPreTraining's
    state dict, without the tied decoder), as transformers' conversion script writes it."""
    import torch

    from bertforge.checkpoint.hf import native_to_hf

    if dst.is_dir() or (dst.exists() and not args.force):
        raise ConfigError(f"{dst} exists; pass --force to replace it" if not dst.is_dir() else
                          f"{dst} is a directory; a .pt/.bin destination names a file")
    if args.to != "native" or args.vocab_file:
        raise ConfigError(f"{dst}: a weights file holds the weights only; --to and --vocab_file need a "
                          "destination directory")
    ckpt = load_checkpoint(args.src, config=args.bert_model, format=args.format)
    dst.parent.mkdir(parents=True, exist_ok=True)
    partial = dst.with_name(dst.name + ".partial")  # a failed write leaves no truncated file under dst's name
    try:
        torch.save(native_to_hf(ckpt.state), partial)
        partial.replace(dst)
    finally:
        partial.unlink(missing_ok=True)
    print(f"converted {ckpt.format} checkpoint {args.src} -> {dst} (transformers' names, "
          f"{sum(v.numel() for v in ckpt.state.values()) / 1e6:.1f}M values; its config is the source's)")
    return dst


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
