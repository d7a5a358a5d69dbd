"""dapt: domain-adaptive pretraining, measured. MiniLM-L6 continued with `bertforge pretrain
--init_checkpoint` (its checkpoint has no pretraining head: the masked-LM transform, its
LayerNorm and output bias and the NSP classifier start fresh; the decoder is the tied word
embeddings) on the context paragraphs of the SQuAD v1.1 dev articles the squad job trains on
(0-37; one document per article, whole articles held out for the masked-LM loss), then
fine-tuned on the squad job's split and recipe (train articles 0-37, evaluate 38-47) and
compared with plain MiniLM. A measurement, not a pass/fail.

Held-out masked-LM loss, three readings of it:
  fresh head  the starting weights, step 0 of the run: a random transform reads MiniLM's
              encoder, so this number says nothing about the encoder;
  head only   after --dapt_head_steps updates of the head alone (embeddings and encoder
              frozen; a diagnostic run whose weights are not used further): MiniLM's own
              encoder read by a trained head, the "before" to compare with;
  after       the continued run's evaluations, its last one the "after".
The continued run is a fixed number of updates (--dapt_steps, sized beforehand from the CPU
seconds per update) and ends early at the first update past --dapt_cpu_minutes of process CPU
time. --dapt_baseline also fine-tunes plain MiniLM, in this code version, beside it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

from .common import Env, Results, bertforge_cli, latest, loss_curve, lr_tag
from .pretrain import in_process
from .squad import SQUAD_TRAIN_ARTICLES, squad_finetune_args

NAME = "dapt"
HELP = "domain-adaptive pretraining: MiniLM continued on SQuAD's text, then fine-tuned on SQuAD"
IN_ALL = False

SEQ, PREDICTIONS = 128, 20
HELD_OUT_FRACTION = 0.1  # of the 38 articles: 3 held out (a keyed hash of their text decides)
DUPE_FACTOR = 5  # instances built 5 times over with other segment splits: a run reads each about once
SMOKE = dict(articles="4:6", held_out_fraction=0.3, dupe_factor=1, batch=8, steps=3, head_steps=2, eval_every=2,
             max_eval_samples=16)


def corpus_file(env: Env, articles: str, path: Path) -> list[str]:
    """Write the articles' context paragraphs as JSON lines, one article a line (its paragraphs
    its lines); returns the titles."""
    start, stop = (int(x) for x in articles.split(":"))
    data = json.loads(env.squad_file.read_text(encoding="utf-8"))["data"][start:stop]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for article in data:
            f.write(json.dumps({"title": article["title"],
                                "text": "\n".join(p["context"] for p in article["paragraphs"])}) + "\n")
    return [article["title"] for article in data]


def held_out_titles(corpus: Path, fraction: float, seed: int) -> list[str]:
    """The articles `bertforge prepare pretraining` puts in its held-out split (its own rule)."""
    from bertforge.data.pretraining.corpus import is_held_out

    rows = [json.loads(line) for line in corpus.read_text(encoding="utf-8").splitlines()]
    return [r["title"] for r in rows if is_held_out(r["text"].split("\n"), fraction, seed)]


def measured_pretrain_job(cfg, cpu_deadline: float, freeze_encoder: bool = False):
    """bertforge's pretraining job, plus: an evaluation before the first update (logged as step
    0), a stop at the first update past `cpu_deadline` (time.process_time()), and, with
    `freeze_encoder`, the embeddings and encoder frozen so that only the head trains (the
    masked-LM decoder is the word embeddings: it stays frozen too)."""
    from bertforge.model.heads import BACKBONE_PREFIXES
    from bertforge.tasks.pretraining import PretrainJob, evaluate_pretraining

    class MeasuredPretrainJob(PretrainJob):
        def prepare_model(self, loaded) -> None:
            super().prepare_model(loaded)
            if freeze_encoder:
                for name, p in loaded.model.named_parameters():
                    if name.startswith(BACKBONE_PREFIXES):
                        p.requires_grad_(False)

        def add_callbacks(self, trainer, loaded, runtime) -> None:
            super().add_callbacks(trainer, loaded, runtime)
            d = self.cfg.data

            def evaluate_start(t) -> None:
                result = evaluate_pretraining(loaded.model, self.eval_set, runtime, d.eval_batch_size,
                                              d.max_eval_samples)
                t.model.train()
                t.log({"step": t.step, "split": "eval", **result})

            trainer.add_callback("on_train_start", evaluate_start)
            trainer.add_callback("on_step_end", lambda t: t.request_stop("CPU time budget")
                                 if time.process_time() > cpu_deadline else None)
    return MeasuredPretrainJob(cfg)


def run_record(model_dir: Path) -> dict:
    """What a pretraining run's metrics.jsonl holds: the held-out evaluations and the training
    records (loss terms, learning rate, global gradient norm)."""
    rows = [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((model_dir / "train_summary.json").read_text())
    return {"steps_done": summary["steps"], "stop_reason": summary.get("stop_reason"),
            "heldout": [{k: r[k] for k in ("step", "mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy")}
                        for r in rows if r.get("split") == "eval"],
            "train_curve": [{k: r.get(k) for k in ("step", "mlm_loss", "nsp_loss", "lr", "grad_norm")}
                            for r in rows if "seq_per_s" in r]}


def weight_change(init: Path, trained: Path, seq: int) -> dict[str, float]:
    """||W - W0|| / ||W0|| over parts of the backbone: how far continued pretraining moved it.
    Position embeddings are split at the pretraining length: rows past it get no gradient."""
    import torch

    from bertforge.checkpoint import load_checkpoint

    before, after = load_checkpoint(init).state, load_checkpoint(trained).state

    def rel(names, rows=slice(None)) -> float:
        num = sum(float((after[n][rows] - before[n][rows]).double().pow(2).sum()) for n in names)
        den = sum(float(before[n][rows].double().pow(2).sum()) for n in names)
        return (num / den) ** 0.5

    encoder = [n for n in before if n.startswith("bert.encoder.")]
    pos = ["bert.embeddings.position_embeddings.weight"]
    with torch.no_grad():
        return {"word_embeddings": rel(["bert.embeddings.word_embeddings.weight"]),
                f"position_embeddings_below_{seq}": rel(pos, slice(0, seq)),
                f"position_embeddings_from_{seq}": rel(pos, slice(seq, None)),
                "encoder_layers": rel(encoder)}


def pretrain_args(env: Env, init: Path, data: Path, out: Path, steps: int, batch: int, lr: float, bias: str,
                  eval_every: int, max_eval_samples: int | None) -> list:
    return ["pretrain", "--init_checkpoint", init, "--input_dir", data, "--output_dir", out,
            "--overwrite_output_dir", "--max_steps", steps, "--train_batch_size", batch,
            "--max_seq_length", SEQ, "--max_predictions_per_seq", PREDICTIONS, "--optimizer", "adamw",
            "--schedule", "linear", "--learning_rate", lr, "--warmup_proportion", 0.1, "--weight_decay", 0.01,
            "--mlm_bias_init", bias, "--seed", 0, "--log_every", 10, "--eval_every", eval_every,
            *(["--max_eval_samples", max_eval_samples] if max_eval_samples else []), *env.runtime_flags()]


def run_dapt(env: Env, results: Results, args: argparse.Namespace) -> None:
    smoke = SMOKE if env.smoke else {}
    articles = smoke.get("articles", SQUAD_TRAIN_ARTICLES)
    fraction = smoke.get("held_out_fraction", HELD_OUT_FRACTION)
    batch, steps = smoke.get("batch", args.dapt_batch), smoke.get("steps", args.dapt_steps)
    head_steps = smoke.get("head_steps", args.dapt_head_steps)
    eval_every = smoke.get("eval_every", args.dapt_eval_every)
    max_eval = smoke.get("max_eval_samples")
    bias, lr = args.dapt_mlm_bias_init, args.dapt_lr
    root = env.workdir / "dapt"
    data = root / "data"

    if not (data / "manifest.json").exists():
        corpus = root / "squad_contexts.jsonl"
        titles = corpus_file(env, articles, corpus)
        cmd, seconds, _ = in_process(
            ["prepare", "pretraining", "--input_file", corpus, "--output_dir", data, "--vocab_file",
             env.model_dir / "vocab.txt", "--max_seq_length", SEQ, "--max_predictions_per_seq", PREDICTIONS,
             "--held_out_fraction", fraction, "--dupe_factor", smoke.get("dupe_factor", DUPE_FACTOR),
             "--num_workers", 0, "--overwrite", "true"])
        splits = json.loads((data / "manifest.json").read_text())["splits"]
        results.add({"comparison": "dapt", "stage": "prepare", "articles": articles, "documents": len(titles),
                     "held_out_articles": held_out_titles(corpus, fraction, 12345),
                     **{f"{s}_{k}": v[k] for s, v in splits.items() for k in ("docs", "instances", "source_tokens")},
                     "run_command": cmd, "seconds": seconds})

    head_key = {"comparison": "dapt", "stage": "head_only", "max_steps": head_steps,
                "learning_rate": args.dapt_head_lr, "mlm_bias_init": bias}
    if not results.find(head_key) and env.time_left("head-only pretraining"):
        out = root / f"head_only_{head_steps}steps_lr{lr_tag(args.dapt_head_lr)}_{bias}bias"
        cpu0 = time.process_time()
        cmd, seconds, _ = in_process(
            pretrain_args(env, env.model_dir, data, out, head_steps, batch, args.dapt_head_lr, bias,
                          max(1, head_steps // 3), max_eval),
            lambda cfg: measured_pretrain_job(cfg, float("inf"), freeze_encoder=True))
        results.add({**head_key, "train_batch_size": batch, "run_command": cmd, "seconds": seconds,
                     "cpu_seconds": time.process_time() - cpu0, "output_dir": str(out), **run_record(out)})

    name = f"pretrain_{steps}steps_b{batch}_lr{lr_tag(lr)}_{bias}bias"
    model_dir = root / name
    key = {"comparison": "dapt", "stage": "pretrain", "max_steps": steps, "train_batch_size": batch,
           "learning_rate": lr, "mlm_bias_init": bias}
    if not results.find(key) and env.time_left("continued pretraining"):
        cpu0 = time.process_time()
        cmd, seconds, _ = in_process(
            pretrain_args(env, env.model_dir, data, model_dir, steps, batch, lr, bias, eval_every, max_eval),
            lambda cfg: measured_pretrain_job(cfg, cpu0 + 60 * args.dapt_cpu_minutes))
        cpu_seconds = time.process_time() - cpu0
        results.add({**key, "run_command": cmd, "seconds": seconds, "cpu_seconds": cpu_seconds,
                     "cpu_minutes_budget": args.dapt_cpu_minutes, "output_dir": str(model_dir),
                     "weight_change": weight_change(env.model_dir, model_dir, SEQ), **run_record(model_dir)})
    if not (model_dir / "model.safetensors").exists():
        return

    inits = [("dapt", model_dir, {"pretrain_steps": steps, "train_batch_size": batch, "learning_rate": lr,
                                  "mlm_bias_init": bias})]
    if args.dapt_baseline:
        inits.append(("minilm", env.model_dir, {}))
    for init, checkpoint, recipe in inits:
        ft_key = {"comparison": "dapt", "stage": "finetune", "init": init, "lr": args.dapt_finetune_lr, "seed": 0,
                  **recipe}
        if results.find(ft_key) or not env.time_left(f"SQuAD fine-tuning from {init}"):
            continue
        out = root / f"squad_{name if init == 'dapt' else init}_lr{lr_tag(args.dapt_finetune_lr)}"
        cmd, seconds = bertforge_cli([*squad_finetune_args(env, checkpoint, args.dapt_finetune_lr, 0, out),
                                      "--overwrite_output_dir"], out.with_suffix(".log"))
        scores = json.loads((out / "eval_results.json").read_text())
        results.add({**ft_key, "f1": scores["f1"], "exact_match": scores["exact_match"],
                     "questions": scores["questions"], "run_command": shlex.join(cmd), "seconds": seconds,
                     "output_dir": str(out), "loss_curve": loss_curve(out / "metrics.jsonl")})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dapt_steps", type=int, default=300,
                        help="updates of continued pretraining (size them to --dapt_cpu_minutes)")
    parser.add_argument("--dapt_cpu_minutes", type=float, default=30.0,
                        help="end continued pretraining at the first update past this much process CPU time")
    parser.add_argument("--dapt_batch", type=int, default=32)
    parser.add_argument("--dapt_lr", type=float, default=1e-4, help="AdamW peak rate (warmup 10%%, linear decay)")
    parser.add_argument("--dapt_mlm_bias_init", choices=["zero", "unigram"], default="unigram",
                        help="where the fresh masked-LM output bias starts (bertforge pretrain --mlm_bias_init)")
    parser.add_argument("--dapt_eval_every", type=int, default=75)
    parser.add_argument("--dapt_head_steps", type=int, default=150, help="updates of the head-only run")
    parser.add_argument("--dapt_head_lr", type=float, default=1e-3)
    parser.add_argument("--dapt_finetune_lr", type=float, default=1e-4)
    parser.add_argument("--dapt_baseline", action="store_true",
                        help="also fine-tune plain MiniLM with the same recipe, in this code version")


def run(env: Env, results: Results, args: argparse.Namespace) -> None:
    run_dapt(env, results, args)


def report(rows: list[dict]) -> list[str]:
    out: list[str] = []
    dapt = [r for r in rows if r.get("comparison") == "dapt"]
    prepared = [r for r in dapt if r.get("stage") == "prepare"]
    if prepared:
        p = prepared[-1]
        out += [f"Continued-pretraining data: the contexts of SQuAD dev articles {p['articles']} "
                f"({p['train_instances']} training instances from {p['train_docs']} articles; held out: "
                f"{', '.join(p['held_out_articles'])}, {p['held_out_instances']} instances).", ""]
    runs = latest(dapt, lambda r: r.get("stage") in ("head_only", "pretrain"))
    if runs:
        out += ["| run | update | held-out MLM loss | MLM accuracy | NSP loss | NSP accuracy |",
                "|---|---|---|---|---|---|"]
        for r in sorted(runs, key=lambda r: r["stage"]):
            what = (f"head only, lr {r['learning_rate']:g}" if r["stage"] == "head_only" else
                    f"continued, {r['steps_done']} updates, batch {r['train_batch_size']}, AdamW lr "
                    f"{r['learning_rate']:g}, {r['cpu_seconds'] / 60:.1f} CPU min")
            for h in r["heldout"]:
                out.append(f"| {what} | {h['step']} | {h['mlm_loss']:.3f} | {100 * h['mlm_accuracy']:.2f} | "
                           f"{h['nsp_loss']:.3f} | {100 * h['nsp_accuracy']:.2f} |")
        out.append("")
    tuned = latest(dapt, lambda r: r.get("stage") == "finetune")
    if tuned:
        out += ["| SQuAD fine-tune from | lr | F1 | EM | plain MiniLM, squad job's record (F1 / EM) |",
                "|---|---|---|---|---|"]
        for r in sorted(tuned, key=lambda r: r["init"]):
            plain = latest(rows, lambda s: s.get("comparison") == "squad" and s.get("side") == "bertforge"
                           and s.get("lr") == r["lr"] and s.get("device_type") == r["device_type"]
                           and s.get("precision") == r["precision"] and s.get("smoke") == r["smoke"])
            ref = f"{plain[-1]['f1']:.2f} / {plain[-1]['exact_match']:.2f}" if plain else "none"
            init = (f"MiniLM + {r['pretrain_steps']} updates on SQuAD contexts" if r["init"] == "dapt"
                    else "plain MiniLM (this code version)")
            out.append(f"| {init} | {r['lr']:g} | {r['f1']:.2f} | {r['exact_match']:.2f} | {ref} |")
        out.append("")
    return out

