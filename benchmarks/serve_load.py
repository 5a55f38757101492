"""Load test for `icft serve`: N concurrent chat clients for T seconds against localhost.

    python benchmarks/serve_load.py --model minilm-decoder --clients 4 --seconds 20
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --clients 8 --seconds 60

With --model or --run it starts `icft serve` on a free port, waits for /health, runs the load, and stops
the server by its pid. It prints requests/s, generated tokens/s, p50/p95/p99 latency and the error count
(503s from a full queue count as errors). Clients and duration are bounded, and only loopback addresses
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

MAX_CLIENTS, MAX_SECONDS = 64, 600
QUESTIONS = [
    "What is asthma?", "What are the first-line tests for type 2 diabetes?", "I have had a cough for three weeks.",
    "Which is the usual treatment for strep throat?", "What are red flags with a headache?",
]  # fmt: skip


def post(url: str, body: dict, timeout: float = 120) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def model_name(url: str) -> str:
    with urllib.request.urlopen(f"{url}/v1/models", timeout=10) as response:
        return json.loads(response.read())["data"][0]["id"]


def run_load(url: str, clients: int, seconds: float, max_tokens: int) -> dict:
    """Each client sends one request after another until time is up; returns the figures."""
    name = model_name(url)
    latencies: list[float] = []
    tokens = [0]
    errors: dict[str, int] = {}
    lock = threading.Lock()
    start = time.perf_counter()
    deadline = start + seconds

    def client(i: int) -> None:
        n = 0
        while time.perf_counter() < deadline:
            body = {"model": name, "max_tokens": max_tokens,
                    "messages": [{"role": "user", "content": QUESTIONS[(i + n) % len(QUESTIONS)]}]}  # fmt: skip
            sent = time.perf_counter()
            try:
                status, answer = post(f"{url}/v1/chat/completions", body)
            except OSError as error:
                status, answer = type(error).__name__, {}
            took = time.perf_counter() - sent
            with lock:
                if status == 200:
                    latencies.append(took)
                    tokens[0] += answer["usage"]["completion_tokens"]
                else:
                    errors[str(status)] = errors.get(str(status), 0) + 1
            if status == 503:
                time.sleep(0.05)  # the server asked us to back off
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
        "requests": len(latencies), "requests_per_s": len(latencies) / wall, "tokens_per_s": tokens[0] / wall,
        "p50_s": cuts[49] if cuts else None, "p95_s": cuts[94] if cuts else None, "p99_s": cuts[98] if cuts else None,
        "errors": sum(errors.values()), "errors_by_status": errors,
    }  # fmt: skip


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    who = ["--run", args.run] if args.run else ["--model", args.model]
    cmd = [sys.executable, "-m", "icft", "serve", *who, "--port", str(port), "--queue-size", str(args.queue_size)]
    if args.retrieve:
        cmd += ["--retrieve", str(args.retrieve)]
    proc = subprocess.Popen(cmd, env={**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=1)
            return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8000")
    target.add_argument("--model", help="start `icft serve --model M` for the benchmark")
    target.add_argument("--run", help="start `icft serve --run D` for the benchmark")
    parser.add_argument("--retrieve", type=int, default=0, help="with --model/--run: the server's --retrieve K")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--queue-size", type=int, default=16)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if not 1 <= args.clients <= MAX_CLIENTS or not 0 < args.seconds <= MAX_SECONDS:
        parser.error(f"--clients must be in 1..{MAX_CLIENTS} and --seconds in (0, {MAX_SECONDS}]")
    if args.url and urlparse(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
        parser.error("--url must be a loopback address (127.0.0.1, localhost or ::1)")

    proc, url = start_server(args) if not args.url else (None, args.url.rstrip("/"))
    try:
        figures = run_load(url, args.clients, args.seconds, args.max_tokens)
    finally:
        if proc is not None:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)

    def secs(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}s"

    print(f"{figures['model']}: {args.clients} clients, {figures['seconds']}s, max_tokens {args.max_tokens}")
    print(f"requests: {figures['requests']}  requests/s: {figures['requests_per_s']:.2f}  "
          f"tokens/s: {figures['tokens_per_s']:.1f}")  # fmt: skip
    print(f"latency p50 {secs(figures['p50_s'])}  p95 {secs(figures['p95_s'])}  p99 {secs(figures['p99_s'])}")
    print(f"errors: {figures['errors']} {figures['errors_by_status'] or ''}".rstrip())
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
