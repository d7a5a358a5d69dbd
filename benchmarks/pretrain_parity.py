"""Pretraining over a real horizon: bertforge against transformers, on the CPU.

The full comparison (2 sides x 2 seeds x 1,000 updates; transformers' side is the slower, its
model computing masked-LM logits at every position; run it alone on the machine, so that the
time per update means something), from the repository root:

    python benchmarks/pretrain_parity.py run --side both --seeds 0 1 --steps 1000 --eval_every 100 \\
        --threads 2 --cache_dir runs/pretrain_parity --out benchmarks/pretrain_parity_results.jsonl
    python benchmarks/pretrain_parity.py report --out benchmarks/pretrain_parity_results.jsonl

The runs may share the machine (each at --threads 1, say); their time per update then means
little, so `time` measures it apart, alone on the machine: both sides, one after the other, on the
same first batches, and `report` shows those figures:

    python benchmarks/pretrain_parity.py time --updates 100 --threads 2 --out benchmarks/pretrain_parity_results.jsonl

One side and seed per invocation gives the same records (`--side bertforge --seeds 0`, then the
others, into the same --out); the data is prepared once into --cache_dir and reused. A check of
every path in a few minutes: `run --side both --seeds 0 --steps 60 --eval_every 20 --threads 1`.

What runs: BERT-mini (L4 H256 A4, the bert-base-uncased vocabulary) from random weights, masked
LM + next sentence prediction on the Wikipedia lead sections prepared by `bertforge prepare
pretraining` (seq 128, 20 predictions), batch 16, dropout 0.1, torch's AdamW (betas 0.9/0.999, eps
1e-6, weight decay 0.01 on all but biases and LayerNorm) with linear warmup (10%) and decay, the
global gradient norm clipped to 1.0.
- bertforge: its pretraining run, `bertforge pretrain --optimizer adamw --schedule linear` as
  Python (`tasks.pretraining.pretrain`): its data loader, PretrainLoss, train_step and Trainer,
  with the torch AdamW and the linear schedule that `--optimizer adamw --schedule linear` build.
- transformers: `BertForPreTraining` and its own loss in a plain PyTorch loop, started from the
  weights bertforge's run starts from (the same seeded construction), fed the batches of
  bertforge's loader in bertforge's order; torch's AdamW with transformers' parameter groups (by
  name), `get_linear_schedule_with_warmup` and `clip_grad_norm_`.
Each side draws its own dropout masks. The prepared data fixes the batch order and masks (its
manifest's seed); --seeds vary the initial weights and the dropout. Both sides are evaluated by
one function, bertforge's `evaluate_pretraining` (the model in eval mode, the whole held-out
split, masked-LM loss and accuracy over the real masked positions, NSP accuracy): transformers'
model enters it through a view that runs its encoder and its own heads, the masked-LM head at the
masked positions.

Pass (`report`): at every evaluation after update 300 the two sides' mean held-out MLM loss
differ by less than the larger of the seed spread (the widest max - min over seeds of either
side) and 1% of their mean, and the final NSP accuracies are within 2 points. --out gets one JSON
line per evaluation and one per run (with its time per update and the command).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import math
import shlex
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import torch
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("pretrain_parity")

SIDES = ("bertforge", "transformers")
JUDGED_AFTER = 300  # updates; evaluations before this are shown, not judged
MLM_RELATIVE = 0.01
NSP_POINTS = 2.0


@dataclass(frozen=True)
class Recipe:
    """What one comparison runs; every record carries it, and `report` judges records of one
    recipe together."""

    model: str = "mini"
    steps: int = 1000
    batch: int = 16
    lr: float = 1e-3
    warmup: float = 0.1
    dropout: float = 0.1
    eval_every: int = 100
    documents: int | None = None  # the first N articles; None: all
    held_out_fraction: float = 0.05
    max_seq_length: int = 128
    max_predictions: int = 20

    def key(self) -> dict:
        return {"benchmark": "pretrain_parity", **dataclasses.asdict(self)}


# ---- data and models -------------------------------------------------------------------------


def prepare_data(recipe: Recipe, wiki: Path, vocab: Path, cache_dir: Path, out: Path) -> Path:
    """The prepared data of this recipe in cache_dir, made once (what `bertforge prepare
    pretraining --input_file WIKI --output_dir DIR --vocab_file VOCAB --max_seq_length 128
    --max_predictions_per_seq 20 --held_out_fraction F --num_workers 0` writes)."""
    from bertforge.data.pretraining import PrepareConfig, prepare_pretraining_data, read_manifest

    name = f"data_seq{recipe.max_seq_length}_p{recipe.max_predictions}_h{recipe.held_out_fraction:g}"
    if recipe.documents is not None:
        name += f"_docs{recipe.documents}"
    data = cache_dir / name
    if (data / "manifest.json").is_file():
        return data
    source = wiki
    if recipe.documents is not None:
        source = cache_dir / f"wiki_first{recipe.documents}.jsonl"
        with wiki.open(encoding="utf-8") as f:
            source.write_text("".join(islice(f, recipe.documents)), encoding="utf-8")
    cfg = PrepareConfig(input_file=str(source), output_dir=str(data), vocab_file=str(vocab),
                        max_seq_length=recipe.max_seq_length, max_predictions_per_seq=recipe.max_predictions,
                        held_out_fraction=recipe.held_out_fraction, num_workers=0, overwrite=True)
    log.info("preparing %s into %s", source, data)
    prepare_pretraining_data(cfg, progress=False)
    splits = read_manifest(data)["splits"]
    append(out, {"kind": "prepare", **recipe.key(), "data_dir": str(data),
                 "instances": {s: v["instances"] for s, v in splits.items()},
                 "random_next": {s: v["random_next"] for s, v in splits.items()}})
    return data


def model_config_file(recipe: Recipe, cache_dir: Path) -> Path:
    """The preset with the recipe's dropout (hidden and attention), as a bert_config.json."""
    from bertforge.config import resolve_config

    config = dataclasses.replace(resolve_config(recipe.model), hidden_dropout_prob=recipe.dropout,
                                 attention_probs_dropout_prob=recipe.dropout)
    path = cache_dir / f"{recipe.model}_dropout{recipe.dropout:g}.json"
    path.write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")
    return path


def pretrain_run(recipe: Recipe, data: Path, config_file: Path, seed: int, output_dir: Path, log_every: int):
    """The `bertforge pretrain` run config of the comparison."""
    from bertforge.runconfig import ModelArgs, RuntimeArgs, TrainArgs
    from bertforge.tasks.config import PretrainData, PretrainRun

    return PretrainRun(
        output_dir=str(output_dir), overwrite_output_dir=True,
        data=PretrainData(input_dir=str(data), eval_every=recipe.eval_every, eval_batch_size=64),
        model=ModelArgs(bert_model=str(config_file)),
        train=TrainArgs(optimizer="adamw", schedule="linear", learning_rate=recipe.lr, warmup_proportion=recipe.warmup,
                        weight_decay=0.01, max_grad_norm=1.0, max_steps=recipe.steps,
                        train_batch_size=recipe.batch, seed=seed, log_every=log_every, skip_checkpoint=True),
        runtime=RuntimeArgs(device="cpu"))


class TransformersPretrainingView(nn.Module):
    """transformers' BertForPreTraining through bertforge's pretraining interface, for the one
    evaluation function: its encoder, its masked-LM head on the hidden states at
    masked_lm_positions, its NSP head on the pooled output."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, token_type_ids: Tensor, attention_mask: Tensor,
                masked_lm_positions: Tensor, **host_facts):
        from bertforge.model.bert import PreTrainingOutput

        sequence, pooled = self.model.bert(input_ids=input_ids, token_type_ids=token_type_ids,
                                           attention_mask=attention_mask, return_dict=False)[:2]
        index = masked_lm_positions.unsqueeze(-1).expand(-1, -1, sequence.shape[-1])
        masked = torch.gather(sequence, 1, index)  # (B, P, H)
        return PreTrainingOutput(self.model.cls.predictions(masked), self.model.cls.seq_relationship(pooled))


def transformers_inputs(batch: dict) -> dict:
    """transformers' labels: the original token at each real masked position, -100 elsewhere."""
    labels = torch.full_like(batch["input_ids"], -100)
    rows, slots = torch.nonzero(batch["masked_lm_weights"] > 0, as_tuple=True)
    labels[rows, batch["masked_lm_positions"][rows, slots]] = batch["masked_lm_ids"][rows, slots]
    return {"input_ids": batch["input_ids"], "token_type_ids": batch["token_type_ids"],
            "attention_mask": batch["attention_mask"], "labels": labels,
            "next_sentence_label": batch["next_sentence_labels"]}


def transformers_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """transformers' examples' rule: no decay on biases and LayerNorm weights, by name."""
    no_decay = ("bias", "LayerNorm.weight")
    named = list(model.named_parameters())
    return [{"params": [p for n, p in named if not any(k in n for k in no_decay)], "weight_decay": weight_decay},
            {"params": [p for n, p in named if any(k in n for k in no_decay)], "weight_decay": 0.0}]


# ---- the two sides ---------------------------------------------------------------------------


@dataclass
class SideResult:
    evals: list[dict]  # step, mlm_loss, mlm_accuracy, nsp_accuracy, nsp_loss
    losses: list[tuple[int, float]]  # (step, mean training loss since the previous one)
    train_seconds: float  # training steps only, evaluations excluded


EVAL_KEYS = ("mlm_loss", "mlm_accuracy", "nsp_accuracy", "nsp_loss")


def run_bertforge(recipe: Recipe, data: Path, config_file: Path, seed: int, workdir: Path,
                  log_every: int) -> SideResult:
    from bertforge.tasks.pretraining import pretrain

    out = workdir / f"bertforge_seed{seed}"
    pretrain(pretrain_run(recipe, data, config_file, seed, out, log_every), progress=False)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "seq_per_s" in r]
    evals = [{"step": r["step"], **{k: r[k] for k in EVAL_KEYS}} for r in rows if r.get("split") == "eval"]
    # A record's throughput covers the steps since the previous record, without callbacks.
    seconds, previous = 0.0, 0
    for r in train:
        seconds += (r["step"] - previous) * recipe.batch / r["seq_per_s"]
        previous = r["step"]
    return SideResult(evals, [(r["step"], r["loss"]) for r in train], seconds)


def run_transformers(recipe: Recipe, data: Path, config_file: Path, seed: int, workdir: Path,
                     log_every: int) -> SideResult:
    import transformers

    from bertforge.checkpoint import native_to_hf
    from bertforge.tasks.common import load_model
    from bertforge.tasks.pretraining import PretrainJob, PretrainStepLoader, evaluate_pretraining
    from bertforge.train.batching import StepPlan
    from bertforge.train.runtime import Runtime, seed_everything

    cfg = pretrain_run(recipe, data, config_file, seed, workdir / f"transformers_seed{seed}", log_every)
    job = PretrainJob(cfg)
    job.check()  # opens the training and held-out data as bertforge's run does
    with Runtime(cfg.runtime) as runtime:
        # bertforge's initial weights, made as its run makes them (runner: seed, then load_model)
        seed_everything(seed)
        loaded = load_model(cfg.model, "pretraining", unpad=cfg.runtime.unpad, **job.model_options())
        model = transformers.BertForPreTraining(transformers.BertConfig(**loaded.config.to_hf_dict("BertForPreTraining")))
        missing, unexpected = model.load_state_dict(native_to_hf(loaded.model.state_dict()), strict=False)
        if unexpected or not set(missing) <= {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}:
            raise SystemExit(f"bertforge's weights do not map onto BertForPreTraining: missing {missing}, "
                             f"unexpected {unexpected}")
        loader = PretrainStepLoader(job.train_set, StepPlan(recipe.batch, 1, 1), runtime.dist.rank)
        optimizer = torch.optim.AdamW(transformers_param_groups(model, 0.01), lr=recipe.lr, betas=(0.9, 0.999),
                                      eps=1e-6, foreach=True)
        schedule = transformers.get_linear_schedule_with_warmup(
            optimizer, math.floor(recipe.warmup * recipe.steps), recipe.steps)
        view = TransformersPretrainingView(model)
        torch.manual_seed(seed)  # its own dropout masks
        model.train()
        evals, losses, window, seconds = [], [], [], 0.0
        batches = iter(loader)
        for step in range(1, recipe.steps + 1):
            t0 = time.perf_counter()
            (batch,) = next(batches)
            loss = model(**transformers_inputs(batch)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            window.append(loss.detach())
            seconds += time.perf_counter() - t0
            if step % log_every == 0 or step == recipe.steps or step == 1:
                losses.append((step, float(torch.stack(window).mean())))
                window = []
            if step % recipe.eval_every == 0 or step == recipe.steps:
                result = evaluate_pretraining(view, job.eval_set, runtime, cfg.data.eval_batch_size)
                model.train()
                evals.append({"step": step, **{k: result[k] for k in EVAL_KEYS}})
                log.info("transformers step %d: %s", step, json.dumps(evals[-1]))
    return SideResult(evals, losses, seconds)


RUNNERS = {"bertforge": run_bertforge, "transformers": run_transformers}


# ---- records ---------------------------------------------------------------------------------


def append(out: Path, record: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def read_records(out: Path) -> list[dict]:
    if not out.is_file():
        return []
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines() if line.strip()]


def recipe_of(args: argparse.Namespace) -> Recipe:
    return Recipe(model=args.model, steps=args.steps, batch=args.batch, lr=args.lr, warmup=args.warmup,
                  dropout=args.dropout, eval_every=args.eval_every, documents=args.documents,
                  held_out_fraction=args.held_out_fraction)


def setup(args: argparse.Namespace, recipe: Recipe) -> tuple[Path, Path, Path]:
    """Torch's threads, and the cache directory, prepared data and model config of `recipe`."""
    torch.set_num_threads(args.threads)
    cache = args.cache_dir.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    data = prepare_data(recipe, args.data_root / "text" / "wiki_summaries_en.jsonl",
                        args.data_root / "vocab" / "bert-base-uncased" / "vocab.txt", cache, args.out)
    return cache, data, model_config_file(recipe, cache)


def time_updates(args: argparse.Namespace) -> None:
    """Time per update of both sides, one after the other in this process, over the first
    --updates batches of the recipe's order (a run of --updates updates, evaluated once at its end,
    outside the timed steps). The records carry the recipe they time."""
    import transformers

    recipe = recipe_of(args)
    short = dataclasses.replace(recipe, steps=args.updates, eval_every=args.updates)
    cache, data, config_file = setup(args, recipe)
    for side in SIDES:
        result = RUNNERS[side](short, data, config_file, 0, cache / "timing", args.log_every)
        seconds = result.train_seconds / args.updates
        append(args.out, {"kind": "timing", **recipe.key(), "side": side, "updates": args.updates,
                          "threads": torch.get_num_threads(), "seconds_per_update": seconds,
                          "torch": torch.__version__, "transformers": transformers.__version__,
                          "command": shlex.join([Path(sys.executable).name, *sys.argv]),
                          "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
        log.info("%s: %.3f s per update over %d updates, %d threads", side, seconds, args.updates,
                 torch.get_num_threads())


def run(args: argparse.Namespace) -> None:
    import transformers

    recipe = recipe_of(args)
    cache, data, config_file = setup(args, recipe)
    sides = SIDES if args.side == "both" else (args.side,)
    common = {"threads": torch.get_num_threads(), "torch": torch.__version__,
              "transformers": transformers.__version__, "command": shlex.join([Path(sys.executable).name, *sys.argv])}
    for seed in args.seeds:
        for side in sides:
            log.info("%s, seed %d: %d updates", side, seed, recipe.steps)
            result = RUNNERS[side](recipe, data, config_file, seed, cache / "runs", args.log_every)
            stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            for e in result.evals:
                append(args.out, {"kind": "eval", **recipe.key(), "side": side, "seed": seed, **e, "date": stamp})
            append(args.out, {"kind": "run", **recipe.key(), "side": side, "seed": seed, **common,
                              "train_seconds": result.train_seconds,
                              "seconds_per_update": result.train_seconds / recipe.steps,
                              "losses": result.losses, "date": stamp})
            log.info("%s, seed %d: %.3f s per update; final %s", side, seed, result.train_seconds / recipe.steps,
                     json.dumps(result.evals[-1]))


# ---- the verdict -----------------------------------------------------------------------------


def judge(records: list[dict]) -> list[dict]:
    """One verdict per recipe found in `records` (the latest record wins for a side, seed and
    step): per evaluation step both sides' mean and spread over seeds, the difference and what
    is allowed; the final NSP accuracies; the time per update; and pass or fail."""
    by_recipe: dict[str, dict] = {}
    recipe_fields = [f.name for f in dataclasses.fields(Recipe)]
    for r in records:
        if r.get("kind") not in ("eval", "run", "timing"):
            continue
        key = json.dumps({k: r.get(k) for k in recipe_fields}, sort_keys=True)
        group = by_recipe.setdefault(key, {"recipe": {k: r.get(k) for k in recipe_fields},
                                           "evals": {}, "runs": {}, "timing": {}})
        if r["kind"] == "timing":
            group["timing"][r["side"]] = r
        elif r["kind"] == "eval":
            group["evals"][(r["side"], r["seed"], r["step"])] = r
        else:
            group["runs"][(r["side"], r["seed"])] = r
    return [_verdict(g) for g in by_recipe.values()]


def _verdict(group: dict) -> dict:
    evals, runs = group["evals"], group["runs"]
    seeds = {side: sorted({seed for s, seed in runs if s == side}) for side in SIDES}
    steps = sorted({step for (_, _, step) in evals})
    rows, ok = [], True
    for step in steps:
        values = {side: [evals[(side, seed, step)]["mlm_loss"] for seed in seeds[side]
                         if (side, seed, step) in evals] for side in SIDES}
        if not all(values.values()):
            continue
        means = {side: statistics.fmean(v) for side, v in values.items()}
        spread = max(max(v) - min(v) for v in values.values())
        allowed = max(spread, MLM_RELATIVE * statistics.fmean(means.values()))
        diff = abs(means["bertforge"] - means["transformers"])
        judged = step > JUDGED_AFTER
        passed = diff < allowed
        ok &= passed or not judged
        rows.append({"step": step, **{f"{s}_mlm_loss": means[s] for s in SIDES},
                     **{f"{s}_mlm_accuracy": statistics.fmean(evals[(s, seed, step)]["mlm_accuracy"]
                                                              for seed in seeds[s] if (s, seed, step) in evals)
                        for s in SIDES},
                     **{f"{s}_nsp_accuracy": statistics.fmean(evals[(s, seed, step)]["nsp_accuracy"]
                                                              for seed in seeds[s] if (s, seed, step) in evals)
                        for s in SIDES},
                     "spread": spread, "diff": diff, "allowed": allowed, "judged": judged, "passed": passed})
    final = rows[-1] if rows else None
    nsp_gap = None if final is None else 100 * abs(final["bertforge_nsp_accuracy"] - final["transformers_nsp_accuracy"])
    complete = (final is not None and final["step"] == group["recipe"]["steps"] and final["judged"]
                and all(len(seeds[s]) >= 2 for s in SIDES))
    passed = complete and ok and nsp_gap <= NSP_POINTS
    timing = {s: statistics.fmean(runs[(s, seed)]["seconds_per_update"] for seed in seeds[s]) if seeds[s] else None
              for s in SIDES}
    threads = sorted({r["threads"] for r in runs.values()})
    alone = group.get("timing", {})
    timed = ({s: alone[s]["seconds_per_update"] for s in SIDES}, sorted({alone[s]["threads"] for s in SIDES}),
             max(alone[s]["updates"] for s in SIDES)) if all(s in alone for s in SIDES) else None
    return {"recipe": group["recipe"], "seeds": seeds, "rows": rows, "nsp_gap_points": nsp_gap,
            "seconds_per_update": timing, "threads": threads, "timed_alone": timed, "complete": complete,
            "verdict": "pass" if passed else "fail" if complete else "incomplete"}


def markdown(verdict: dict) -> str:
    r = verdict["recipe"]
    lines = [f"### {r['model']}, {r['steps']} updates, batch {r['batch']}, AdamW {r['lr']:g}, warmup {r['warmup']:g}, "
             f"dropout {r['dropout']:g} (seeds: bertforge {verdict['seeds']['bertforge']}, transformers "
             f"{verdict['seeds']['transformers']})", "",
             "| update | MLM loss bertforge | MLM loss transformers | difference | allowed | MLM acc. bf / tf "
             "| NSP acc. bf / tf | judged |",
             "|---|---|---|---|---|---|---|---|"]
    for row in verdict["rows"]:
        judged = ("pass" if row["passed"] else "FAIL") if row["judged"] else "-"
        lines.append(f"| {row['step']} | {row['bertforge_mlm_loss']:.4f} | {row['transformers_mlm_loss']:.4f} "
                     f"| {row['diff']:.4f} | {row['allowed']:.4f} "
                     f"| {100 * row['bertforge_mlm_accuracy']:.2f} / {100 * row['transformers_mlm_accuracy']:.2f} "
                     f"| {100 * row['bertforge_nsp_accuracy']:.2f} / {100 * row['transformers_nsp_accuracy']:.2f} "
                     f"| {judged} |")
    timing = verdict["seconds_per_update"]
    shown = ", ".join(f"{s} {timing[s]:.3f} s" for s in SIDES if timing[s] is not None)
    gap = verdict["nsp_gap_points"]
    lines += ["", f"Final NSP accuracy gap: {gap:.2f} points (allowed {NSP_POINTS:g})." if gap is not None else "",
              f"Time per update as the runs went (torch threads: {', '.join(map(str, verdict['threads']))}; "
              f"runs sharing the machine slow each other): {shown}.",
              _timed_alone(verdict),
              f"Verdict: **{verdict['verdict']}** (MLM loss judged after update {JUDGED_AFTER}: difference below "
              f"the larger of the seed spread and {MLM_RELATIVE:.0%} of the mean; needs 2 seeds per side and "
              f"a run past update {JUDGED_AFTER}).", ""]
    return "\n".join(lines)


def _timed_alone(verdict: dict) -> str:
    if verdict.get("timed_alone") is None:
        return "Time per update measured alone: not yet (`pretrain_parity.py time`)."
    seconds, threads, updates = verdict["timed_alone"]
    ratio = seconds["transformers"] / seconds["bertforge"]
    return (f"Time per update measured alone (`time`, {updates} updates, torch threads "
            f"{', '.join(map(str, threads))}): bertforge {seconds['bertforge']:.3f} s, transformers "
            f"{seconds['transformers']:.3f} s (bertforge {ratio:.2f}x as fast).")


def report(args: argparse.Namespace) -> int:
    verdicts = judge(read_records(args.out))
    if not verdicts:
        print(f"no results in {args.out}")
        return 1
    print("\n".join(markdown(v) for v in verdicts))
    return 0 if all(v["verdict"] == "pass" for v in verdicts) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    r = commands.add_parser("run", help="train and evaluate sides and seeds, appending to --out")
    r.add_argument("--side", choices=(*SIDES, "both"), default="both")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    t = commands.add_parser("time", help="time per update of both sides, alone on the machine")
    t.add_argument("--updates", type=int, default=100, help="updates timed per side")
    defaults = Recipe()
    for p in (r, t):
        p.add_argument("--steps", type=int, default=defaults.steps)
        p.add_argument("--eval_every", type=int, default=defaults.eval_every)
        p.add_argument("--threads", type=int, default=2, help="torch threads (the same for both sides)")
        p.add_argument("--model", default=defaults.model, help="a bertforge preset (mini: L4 H256 A4)")
        p.add_argument("--batch", type=int, default=defaults.batch)
        p.add_argument("--lr", type=float, default=defaults.lr)
        p.add_argument("--warmup", type=float, default=defaults.warmup, help="warmup proportion of the updates")
        p.add_argument("--dropout", type=float, default=defaults.dropout, help="hidden and attention dropout")
        p.add_argument("--documents", type=int, default=None, help="prepare only the first N articles")
        p.add_argument("--held_out_fraction", type=float, default=defaults.held_out_fraction,
                       help="share of articles in the held-out split (0.05: ~900 sequences, for NSP within 2 points)")
        p.add_argument("--log_every", type=int, default=10, help="training-loss records every N updates")
        p.add_argument("--cache_dir", type=Path, default=Path("runs/pretrain_parity"),
                       help="prepared data, model config and run directories (data is prepared once)")
        p.add_argument("--data_root", type=Path, default=REPO.parent / "shared" / "data")
    for p in (r, t, commands.add_parser("report", help="the pass criterion and a Markdown table from --out")):
        p.add_argument("--out", type=Path, default=Path("benchmarks/pretrain_parity_results.jsonl"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.command == "report":
        return report(args)
    if args.command == "time":
        time_updates(args)
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
