"""Slow clients against `icft serve` (issue 35): does `/health` stay fast while thousands of connections trickle?

    python benchmarks/slow_clients.py                               # 2,000 slow connections, 30 s, ulimit -n 1024
    python benchmarks/slow_clients.py --connections 500 --seconds 15 --nofile 512

It starts the server (icft.inference.serve.serve with a stand-in engine: the connection handling under test does
not touch a model) on a free loopback port, its open-files limit set to --nofile (soft and hard, as `ulimit -n`
sets it), and opens --connections connections that each send a request one byte every 2 s and never finish it; a
connection the server drops is opened again --reopen seconds later (2 s: at the attacker's trickle pace), as an
attacker keeping its connections up would. Every 0.5 s it times a GET /health
on a fresh connection. It prints the /health latencies (median, 95th percentile, max, failures), the slow
connections opened and dropped by the server, the most files the server held open, and the size of the server's
log, and exits 1 when /health ever took 1 s or more (or failed) or the log reached 1 MB.

Loopback only, at most 5,000 connections and 300 s; it stops the server and its clients by their process ids.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MAX_CONNECTIONS, MAX_SECONDS = 5000, 300
TRICKLE_S, PROBE_S = 2.0, 0.5
HEALTH_LIMIT_S, LOG_LIMIT = 1.0, 1_000_000


class StandInEngine:
    """What create_app and serve read of an engine; /health and the connection handling need no model."""

    name, limit, retrieve_k = "stand-in", 2048, 0

    class tokenizer:  # noqa: N801 - an attribute holding a class, as an engine holds its tokenizer
        @staticmethod
        def get_vocab() -> dict[str, int]:
            return {"a": 0, "abcdefghijklmnop": 1}


def run_server(port: int) -> None:
    """The server process (`--server PORT`): serve() until SIGTERM."""
    from icft.inference.serve import serve

    raise SystemExit(serve(StandInEngine(), port=port))


def start_server(port: int, nofile: int, log: Path) -> subprocess.Popen:
    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with log.open("wb") as out:
        server = subprocess.Popen([sys.executable, __file__, "--server", str(port)], stdout=out,
                                  stderr=subprocess.STDOUT, env=env, preexec_fn=limit_files)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit("server exited:\n" + log.read_text()[-3000:])
        if health(port, 2.0) is not None:
            return server
        time.sleep(0.3)
    server.kill()
    raise SystemExit("server did not start:\n" + log.read_text()[-3000:])


def health(port: int, timeout: float) -> float | None:
    """Seconds for a whole GET /health on a fresh connection, or None when it failed or timed out."""
    started = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
            answer = b""
            while piece := s.recv(65536):
                answer += piece
    except OSError:
        return None
    return time.monotonic() - started if answer.startswith(b"HTTP/1.1 200") else None


def slow_clients(port: int, count: int, seconds: float, reopen: float, results: multiprocessing.Queue) -> None:
    """The attacker's process: `count` connections trickling a request that never ends, reopened when dropped."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, count + 256)), hard))
    figures = {"opened": 0, "dropped": 0, "refused": 0, "open_at_end": 0}
    writers: set[asyncio.StreamWriter] = set()

    async def one(end: float) -> None:
        head = f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Slow: ".encode() + b"a" * 100_000
        while time.monotonic() < end:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                figures["refused"] += 1
                await asyncio.sleep(reopen)
                continue
            figures["opened"] += 1
            writers.add(writer)
            try:
                sent = 0
                while time.monotonic() < end:
                    writer.write(head[sent : sent + 1])
                    sent += 1
                    try:  # a dropped connection reads as end of file (or a reset) within the trickle's pause
                        if not await asyncio.wait_for(reader.read(1), TRICKLE_S) and time.monotonic() < end:
                            figures["dropped"] += 1
                            break
                    except TimeoutError:
                        continue
            except OSError:
                figures["dropped"] += 1
            finally:
                writers.discard(writer)
                writer.close()
            await asyncio.sleep(reopen)

    async def main() -> None:
        end = time.monotonic() + seconds
        tasks = []
        for _ in range(count):
            tasks.append(asyncio.ensure_future(one(end)))
            await asyncio.sleep(0)  # let each start connecting: a burst, as an attacker would send
        await asyncio.sleep(max(0.0, end - time.monotonic() - 0.5))
        figures["open_at_end"] = len(writers)
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())
    results.put(figures)


def server_cpu(pid: int) -> float:
    """CPU seconds the process has used (user + system)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_files(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--nofile", type=int, default=1024, help="the server's open-files limit (ulimit -n)")
    parser.add_argument("--reopen", type=float, default=2.0, help="seconds before a dropped connection is reopened")
    parser.add_argument("--server", type=int, help=argparse.SUPPRESS)  # internal: run the server on this port
    args = parser.parse_args(argv)
    if args.server:
        run_server(args.server)
    if not 1 <= args.connections <= MAX_CONNECTIONS or not 5 <= args.seconds <= MAX_SECONDS or args.reopen < 0.1:
        parser.error(f"--connections 1..{MAX_CONNECTIONS}, --seconds 5..{MAX_SECONDS}, --reopen 0.1 or more")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = Path(tempfile.mkdtemp(prefix="icft-slow-clients-")) / "server.log"
    server = start_server(port, args.nofile, log)
    results: multiprocessing.Queue = multiprocessing.Queue()
    clients = multiprocessing.Process(target=slow_clients,
                                      args=(port, args.connections, args.seconds, args.reopen, results))  # fmt: skip
    latencies: list[float | None] = []
    most_files = 0
    try:
        clients.start()
        time.sleep(3.0)  # the burst of connections first
        end = time.monotonic() + args.seconds - 4.0
        while time.monotonic() < end:
            latencies.append(health(port, 5.0))
            most_files = max(most_files, open_files(server.pid))
            time.sleep(PROBE_S)
        cpu = server_cpu(server.pid)
        figures = results.get(timeout=args.seconds + 60)
        clients.join(timeout=30)
    finally:
        if clients.is_alive():
            os.kill(clients.pid, signal.SIGKILL)
        os.kill(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(server.pid, signal.SIGKILL)
    answered = [t for t in latencies if t is not None]
    failed = len(latencies) - len(answered)
    size = log.stat().st_size
    cap = next((line for line in log.read_text(errors="replace").splitlines() if "connections" in line), "")
    print(f"server: ulimit -n {args.nofile}; {cap.split(', ')[-1] if cap else 'cap not printed'}")
    print(f"slow connections: {args.connections} kept up for {args.seconds:g} s; opened {figures['opened']}, "
          f"dropped by the server {figures['dropped']}, refused {figures['refused']}, open at the end "
          f"{figures['open_at_end']}, reopened {args.reopen:g} s after a drop; the server held at most "
          f"{most_files} files open and used {cpu:.0f} s of CPU")  # fmt: skip
    if answered:
        q95 = sorted(answered)[max(0, int(0.95 * len(answered)) - 1)]
        print(f"/health: {len(latencies)} probes, median {statistics.median(answered) * 1000:.0f} ms, p95 "
              f"{q95 * 1000:.0f} ms, max {max(answered) * 1000:.0f} ms, failed or over 5 s: {failed}")  # fmt: skip
    else:
        print(f"/health: {len(latencies)} probes, all failed")
    print(f"server log: {size} bytes ({log})")
    ok = answered and failed == 0 and max(answered) < HEALTH_LIMIT_S and size < LOG_LIMIT
    print("ok" if ok else "FAILED: /health took 1 s or more, failed, or the log reached 1 MB")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    raise SystemExit(main())
