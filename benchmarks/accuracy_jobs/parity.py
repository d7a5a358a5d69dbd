"""parity: pretraining over a real horizon, bertforge against transformers: the comparison of
benchmarks/pretrain_parity.py (its docstring says what runs and what passes), run here with its
records in the results file beside the other jobs': BERT-mini on the Wikipedia lead sections,
1,000 updates, held-out masked-LM loss and NSP accuracy every 100, two seeds per side, then the
time per update of both sides measured on its own. Hours on a CPU; run it alone on the machine
(or run the script's `run` per side and seed in parallel at one thread each, then `time` alone)."""

from __future__ import annotations

import argparse

import pretrain_parity

from .common import Env, Results

NAME = "parity"
HELP = "pretraining over 1,000 updates: bertforge against transformers (benchmarks/pretrain_parity.py)"
IN_ALL = False
SMOKE = ["--model", "tiny", "--steps", "4", "--eval_every", "2", "--batch", "4", "--documents", "80",
         "--held_out_fraction", "0.15"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--parity_seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--parity_threads", type=int, default=2, help="torch threads, both sides")
    parser.add_argument("--parity_time_updates", type=int, default=100, help="updates timed per side")


def run(env: Env, results: Results, args: argparse.Namespace) -> None:
    common = [*(SMOKE if env.smoke else []), "--threads", str(args.parity_threads),
              "--cache_dir", str(env.workdir / "pretrain_parity"), "--data_root", str(env.data_root),
              "--out", str(results.path)]
    done = {(r["side"], r["seed"]) for r in results.records() if r.get("benchmark") == "pretrain_parity"
            and r.get("kind") == "run"}
    for seed in args.parity_seeds:
        for side in pretrain_parity.SIDES:
            if (side, seed) not in done and env.time_left(f"pretraining parity, {side} seed {seed}"):
                pretrain_parity.main(["run", "--side", side, "--seeds", str(seed), *common])
    if env.time_left("pretraining parity timing"):
        updates = 2 if env.smoke else args.parity_time_updates
        pretrain_parity.main(["time", "--updates", str(updates), *common])


def report(rows: list[dict]) -> list[str]:
    verdicts = pretrain_parity.judge([r for r in rows if r.get("benchmark") == "pretrain_parity"])
    if not verdicts:
        return []
    return ["## Pretraining over 1,000 updates: bertforge against transformers", "",
            *(pretrain_parity.markdown(v) for v in verdicts)]
