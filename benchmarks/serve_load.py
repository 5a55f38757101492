"""Load test for `icft serve`: N concurrent chat clients for T seconds against localhost, for one or more N.

    python benchmarks/serve_load.py --model smollm2-135m-instruct --clients 1 4 8 --seconds 60
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --clients 8 --seconds 60 --api-key KEY

With --model or --run it starts `icft serve` on a free port, waits for /health, sends one warm-up request,
runs the load at each client count in turn, and stops the server by its pid. Each client sends greedy chat
requests one after another. It prints, per client count, requests/s, generated tokens/s, p50/p95/p99 latency
of the successful requests, errors, and apart from them the 503s of the bounded queue (the server asking the
client to retry), then a Markdown table of all. Clients and duration are bounded, and only loopback addresses
are accepted: this is a benchmark, not a load generator for other people's servers.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import urlparse

from icft.tables import cell, markdown

MAX_CLIENTS, MAX_SECONDS = 64, 600
QUESTIONS = [
    "What is asthma?", "What are the first-line tests for type 2 diabetes?", "I have had a cough for three weeks.",
    "Which is the usual treatment for strep throat?", "What are red flags with a headache?",
]  # fmt: skip


def post(url: str, body: dict, key: str | None, timeout: float = 300) -> tuple[int, dict]:
    headers = {"content-type": "application/json", **({"authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def model_name(url: str, key: str | None) -> str:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    with urllib.request.urlopen(urllib.request.Request(f"{url}/v1/models", headers=headers), timeout=10) as response:
        return json.loads(response.read())["data"][0]["id"]


def ask(url: str, name: str, question: str, max_tokens: int, key: str | None) -> tuple[int | str, dict]:
    body = {"model": name, "max_tokens": max_tokens, "messages": [{"role": "user", "content": question}]}
    try:
        return post(f"{url}/v1/chat/completions", body, key)
    except OSError as error:
        return type(error).__name__, {}


def run_load(url: str, clients: int, seconds: float, max_tokens: int, key: str | None = None) -> dict:
    """Each client sends one request after another until time is up; returns the figures."""
    name = model_name(url, key)
    latencies: list[float] = []
    tokens = [0]
    errors: dict[str, int] = {}
    busy = [0]
    lock = threading.Lock()
    start = time.perf_counter()
    deadline = start + seconds

    def client(i: int) -> None:
        n = 0
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            status, answer = ask(url, name, QUESTIONS[(i + n) % len(QUESTIONS)], max_tokens, key)
            took = time.perf_counter() - sent
            with lock:
                if status == 200:
                    latencies.append(took)
                    tokens[0] += answer["usage"]["completion_tokens"]
                elif status == 503:
                    busy[0] += 1
                else:
                    errors[str(status)] = errors.get(str(status), 0) + 1
            if status == 503:
                time.sleep(1.0)  # the server's Retry-After
            n += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    cuts = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) >= 2 else latencies * 99
    return {
        "model": name, "clients": clients, "seconds": round(wall, 2), "max_tokens": max_tokens,
        "requests": len(latencies), "requests_per_s": len(latencies) / wall, "tokens": tokens[0],
        "tokens_per_s": tokens[0] / wall,
        "p50_s": cuts[49] if cuts else None, "p95_s": cuts[94] if cuts else None, "p99_s": cuts[98] if cuts else None,
        "errors": sum(errors.values()), "errors_by_status": errors, "busy_503": busy[0],
    }  # fmt: skip


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    who = ["--run", args.run] if args.run else ["--model", args.model]
    cmd = [sys.executable, "-m", "icft", "serve", *who, "--port", str(port), "--queue-size", str(args.queue_size),
           "--batch-size", str(args.batch_size)]  # fmt: skip
    if args.retrieve:
        cmd += ["--retrieve", str(args.retrieve)]
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    if args.api_key:
        env["ICFT_API_KEY"] = args.api_key
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    proc = subprocess.Popen(cmd, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=1)
            return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not start")


def secs(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f} s"


def table(rows: list[dict]) -> str:
    header = ["clients", "requests", "requests/s", "tokens/s", "p50", "p95", "p99", "errors", "503s (queue full)"]
    cells = [[str(f["clients"]), str(f["requests"]), cell(f["requests_per_s"], 2), cell(f["tokens_per_s"], 1),
              secs(f["p50_s"]), secs(f["p95_s"]), secs(f["p99_s"]), str(f["errors"]), str(f["busy_503"])]
             for f in rows]  # fmt: skip
    return "\n".join(markdown(header, cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8000")
    target.add_argument("--model", help="start `icft serve --model M` for the benchmark")
    target.add_argument("--run", help="start `icft serve --run D` for the benchmark")
    parser.add_argument("--retrieve", type=int, default=0, help="with --model/--run: the server's --retrieve K")
    parser.add_argument("--clients", type=int, nargs="+", default=[4], help="client counts, run one after another")
    parser.add_argument("--seconds", type=float, default=20, help="per client count")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--queue-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8, help="with --model/--run: the server's --batch-size")
    parser.add_argument("--threads", type=int, help="with --model/--run: the server's torch threads (OMP_NUM_THREADS)")
    parser.add_argument("--api-key", default=os.environ.get("ICFT_API_KEY"), help="default: $ICFT_API_KEY")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if not all(1 <= c <= MAX_CLIENTS for c in args.clients) or not 0 < args.seconds <= MAX_SECONDS:
        parser.error(f"--clients must be in 1..{MAX_CLIENTS} and --seconds in (0, {MAX_SECONDS}]")
    if args.url and urlparse(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
        parser.error("--url must be a loopback address (127.0.0.1, localhost or ::1)")

    proc, url = start_server(args) if not args.url else (None, args.url.rstrip("/"))
    rows = []
    try:
        ask(url, model_name(url, args.api_key), QUESTIONS[0], args.max_tokens, args.api_key)  # warm-up, not counted
        for clients in args.clients:
            figures = run_load(url, clients, args.seconds, args.max_tokens, args.api_key)
            rows.append(figures)
            print(f"{figures['model']}: {clients} clients, {figures['seconds']} s, max_tokens {args.max_tokens}: "
                  f"{figures['requests']} requests, {figures['requests_per_s']:.2f} requests/s, "
                  f"{figures['tokens_per_s']:.1f} tokens/s, latency p50 {secs(figures['p50_s'])} "
                  f"p95 {secs(figures['p95_s'])} p99 {secs(figures['p99_s'])}, errors {figures['errors']} "
                  f"{figures['errors_by_status'] or ''}, 503s {figures['busy_503']}", flush=True)  # fmt: skip
    finally:
        if proc is not None:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
    print(table(rows))
    if len(rows) > 1:
        print(f"tokens/s at {rows[-1]['clients']} clients / at {rows[0]['clients']}: "
              f"{rows[-1]['tokens_per_s'] / max(rows[0]['tokens_per_s'], 1e-9):.2f}x")  # fmt: skip
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
