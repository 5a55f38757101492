"""Trust nothing that arrives (issue 35): run folders get zipped and shared, `icft serve` sits on hospital
networks. Each test plays one attack of the issue and checks what icft does now: a checkpoint that would run
code, an export that deleted user files, links in run folders, YAML alias bombs and deep nesting, a damaged
marker, a resume with no checkpoint, a non-ASCII API key, an Origin of another scheme, a megabyte prompt and
slow clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from icft.cli import main


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


def run_folder(tmp_path: Path, *settings: str) -> Path:
    """A run folder as icft train leaves it before its first model load: marker and config.yaml."""
    from icft.config import load_config, save_config
    from icft.runs import MARKER, config_hash

    run = tmp_path / "run"
    run.mkdir()
    config = load_config(None, ["model.name=/no/such/model", "data.train=[/no/such/data.jsonl]", *settings])
    save_config(config, run / "config.yaml")
    (run / MARKER).write_text(json.dumps({"icft_run": 1, "config_hash": config_hash(config.to_dict()),
                                          "owned": ["config.yaml", "checkpoints"]}))  # fmt: skip
    return run


# --- 1. checkpoints hold data, not code -----------------------------------------------------------------


class Payload:
    """What an attacker pickles: unpickling it calls os.system."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_a_planted_pickle_is_refused_and_does_not_run(tmp_path, capsys):
    import torch

    from icft.checkpoint import load_data_only
    from icft.errors import TrainingError

    ran = tmp_path / "payload-ran"
    run = run_folder(tmp_path)
    step = run / "checkpoints" / "step-000003"
    step.mkdir(parents=True)
    torch.save({"state": Payload(f"touch {ran}")}, step / "rank0.pt")
    torch.save({"optimizer": Payload(f"touch {ran}"), "scheduler": {}}, step / "optim.pt")
    for name in ("rank0.pt", "optim.pt"):
        with pytest.raises(TrainingError) as refused:
            load_data_only(step / name)
        message = str(refused.value)
        assert message.startswith(f"{step / name}: not loaded: it holds Python objects") and "\n" not in message
        assert "system" in message and f"--output-dir {run}" in message
    assert not ran.exists(), "the checkpoint's code ran"

    data = {"weights": torch.ones(2), "rng": [3, list(range(5)), None], "note": "plain"}  # what icft saves
    torch.save(data, step / "trainable.pt")
    assert load_data_only(step / "trainable.pt")["rng"] == data["rng"]


@pytest.mark.slow
def test_resume_of_a_planted_checkpoint_is_one_line(tiny_llama_dir, staged_data, tmp_path, capsys, monkeypatch):
    """The whole path: a run killed after its checkpoint, its rank file swapped for a pickle that runs code."""
    import torch

    from icft.recipes import train as recipe

    run, ran = tmp_path / "run", tmp_path / "payload-ran"
    train, val = staged_data
    pairs = {"model.name": tiny_llama_dir, "model.max_length": 48, "data.train": f"[{train}]",
             "data.validation": f"[{val}]", "train.max_steps": 6, "train.batch_size": 4, "train.save_every": 3,
             "train.eval_max_examples": 4, "memory.ltm_capacity": 12, "memory.stm_capacity": 8}  # fmt: skip
    real = recipe.save_checkpoint

    def save_then_stop(run_dir, at, *args, **kwargs):  # a kill right after the first checkpoint
        real(run_dir, at, *args, **kwargs)
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(recipe, "save_checkpoint", save_then_stop)
        argv = [x for k, v in pairs.items() for x in ("--set", f"{k}={v}")]
        assert main(["train", *argv, "--output-dir", str(run)]) == 130
    rank = run / "checkpoints" / "step-000003" / "rank0.pt"
    saved = torch.load(rank, weights_only=True)  # this version's checkpoint is plain data
    assert isinstance(saved["state"], dict) and isinstance(saved["rng"]["numpy"], list)
    torch.save({**saved, "state": Payload(f"touch {ran}")}, rank)
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 2
    assert f"{rank}: not loaded: it holds Python objects" in one_line_error(capsys)
    assert not ran.exists()


# --- 2. export owns its files ---------------------------------------------------------------------------


@pytest.fixture
def adapter_run(tmp_path, bert_tokenizer, tiny_llama_dir, staged_data) -> Path:
    """A finished run as export reads it without merging: config.yaml, adapter/ (with its tokenizer), memory/."""
    from icft.config import load_config, save_config

    run = tmp_path / "exp1" / "myrun"
    (run / "memory").mkdir(parents=True)
    train, _ = staged_data
    save_config(load_config(None, [f"model.name={tiny_llama_dir}", f"data.train=[{train}]"]), run / "config.yaml")
    bert_tokenizer.save_pretrained(run / "adapter")
    (run / "adapter" / "adapter_config.json").write_text("{}")
    (run / "memory" / "memory.jsonl").write_text("")
    return run


def test_re_export_keeps_the_users_notes(adapter_run, tmp_path, capsys):
    out = tmp_path / "export"
    assert main(["export", "--run", str(adapter_run), "--output", str(out)]) == 0
    marker = json.loads((out / "icft_export.json").read_text())
    assert {"adapter_config.json", "README.md", "prompt_format.json", "memory"} <= set(marker["owned"])
    (out / "notes.txt").write_text("what I found\n")
    (out / "README.md").write_text("stale card")  # export's own file: replaced
    assert main(["export", "--run", str(adapter_run), "--output", str(out)]) == 0
    assert (out / "notes.txt").read_text() == "what I found\n"
    assert (out / "README.md").read_text() != "stale card"
    assert "notes.txt" not in json.loads((out / "icft_export.json").read_text())["owned"]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_unknown_files_are_refused_without_overwrite_and_kept_with_it(adapter_run, tmp_path, capsys):
    """A folder holding only an icft_export.json (an older icft's, listing nothing) and important.doc was wiped."""
    out = tmp_path / "shared"
    out.mkdir()
    (out / "icft_export.json").write_text('{"format": "adapter"}')
    (out / "important.doc").write_text("irreplaceable")
    assert main(["export", "--run", str(adapter_run), "--output", str(out)]) == 2
    err = one_line_error(capsys)
    assert f"{out}: not empty (important.doc) and not an earlier icft export" in err and "--overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == ["icft_export.json", "important.doc"]
    assert main(["export", "--run", str(adapter_run), "--output", str(out), "--overwrite"]) == 0
    assert (out / "important.doc").read_text() == "irreplaceable"
    assert "important.doc" not in json.loads((out / "icft_export.json").read_text())["owned"]


def test_an_output_holding_or_inside_the_run_is_refused(adapter_run, capsys):
    """`icft export --run exp1/myrun --output exp1` deleted the run itself."""
    before = sorted(p.relative_to(adapter_run.parent) for p in adapter_run.parent.rglob("*"))
    for output, where in ((adapter_run.parent, "holds"), (adapter_run, "is"), (adapter_run / "export", "lies inside")):
        assert main(["export", "--run", str(adapter_run), "--output", str(output)]) == 2
        assert f"--output {output}: {where} the run folder {adapter_run}" in one_line_error(capsys)
    assert sorted(p.relative_to(adapter_run.parent) for p in adapter_run.parent.rglob("*")) == before


def test_export_removes_links_not_what_they_point_to(adapter_run, tmp_path):
    out, victim = tmp_path / "export", tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    assert main(["export", "--run", str(adapter_run), "--output", str(out)]) == 0
    import shutil

    shutil.rmtree(out / "memory")
    (out / "memory").symlink_to(victim)  # an owned name, now a link out of the folder
    assert main(["export", "--run", str(adapter_run), "--output", str(out)]) == 0
    assert (victim / "keep.txt").read_text() == "mine" and not (out / "memory").is_symlink()


# --- 3 and 6. no link is followed in a run folder -------------------------------------------------------


def test_a_symlinked_lock_truncates_nothing(tmp_path):
    from icft.errors import TrainingError
    from icft.runs import LOCK, RunFolder

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    for kind in ("symlink", "hardlink"):
        run = tmp_path / f"run-{kind}"
        run.mkdir()
        (run / LOCK).symlink_to(victim) if kind == "symlink" else os.link(victim, run / LOCK)
        with pytest.raises(TrainingError, match=f"{run / LOCK}: .*not icft's lock file: remove it"):
            RunFolder(run).claim({"name": "x"}, print)
        assert victim.read_text() == "precious\n", kind


def test_resume_refuses_a_symlinked_checkpoints_folder(tmp_path, capsys):
    """--resume followed checkpoints/ out of the run and its rotation deleted two folders there."""
    outside = tmp_path / "elsewhere"
    for step in (1, 2, 3):
        (outside / f"step-00000{step}").mkdir(parents=True)
        (outside / f"step-00000{step}" / "data.bin").write_text("someone's")
    run = run_folder(tmp_path)
    (run / "checkpoints").symlink_to(outside)
    assert main(["train", "--resume", str(run)]) == 2
    assert f"{run / 'checkpoints'}: a symbolic link" in one_line_error(capsys)
    assert sorted(p.name for p in outside.iterdir()) == ["step-000001", "step-000002", "step-000003"]


def test_checkpoint_rotation_stays_in_the_run(tmp_path):
    from icft.checkpoint import latest_checkpoint
    from icft.errors import TrainingError
    from icft.runs import checkpoint_folders, real_folder

    run, outside = tmp_path / "run", tmp_path / "elsewhere"
    (outside / "step-000009").mkdir(parents=True)
    (run / "checkpoints" / "step-000001").mkdir(parents=True)
    (run / "checkpoints" / "step-000009").symlink_to(outside / "step-000009")
    assert checkpoint_folders(run) == [run / "checkpoints" / "step-000001"]  # a linked step is not the run's
    assert latest_checkpoint(run) == run / "checkpoints" / "step-000001"
    linked = tmp_path / "linked-run"
    linked.mkdir()
    (linked / "checkpoints").symlink_to(run / "checkpoints")
    assert checkpoint_folders(linked) == []
    with pytest.raises(TrainingError, match="a symbolic link"):
        real_folder(linked / "checkpoints", linked)


# --- 5. YAML alias bombs, under a memory cap --------------------------------------------------------------

BOMB = "\n".join(
    ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    + [f"name: [{', '.join(['*a8'] * 9)}]"]
)  # 9**10 strings once expanded


def capped(code: str, argvs: list, timeout: float = 120) -> subprocess.CompletedProcess:
    """Python code in a subprocess allowed 1 GiB of address space beyond what icft and torch take once imported
    (a CUDA build of torch maps several GiB), and a timeout: a regression fails, it does not eat the machine."""
    prelude = ("import resource, torch, icft.cli, icft.inference.export, icft.recipes.train\n"
               "status = open('/proc/self/status').read().split()\n"
               "mapped = int(status[status.index('VmSize:') + 1]) * 1024  # kB\n"
               "hard = resource.getrlimit(resource.RLIMIT_AS)[1]\n"
               "resource.setrlimit(resource.RLIMIT_AS, (mapped + (1 << 30), hard))\n")  # fmt: skip
    return subprocess.run([sys.executable, "-c", prelude + code, json.dumps(argvs)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip


def test_an_alias_bomb_is_refused_in_one_line(tmp_path):
    config = tmp_path / "bomb.yaml"
    config.write_text(BOMB + "\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(BOMB + "\n")
    flow = "[" + ", ".join(["&a [x, x, x, x, x, x, x, x, x]"] + [f"&b{i} [{', '.join(['*a'] * 9)}]" for i in
                                                                    range(3)]) + "]"  # fmt: skip
    cases = {
        "config file": (["train", "--config", str(config)], f"{config}:2: YAML aliases (*name) are not accepted"),
        "--set": (["train", "--set", f"name={flow}"], "--set 'name=[&a [x, x, x"),
        "a run's config.yaml": (["export", "--run", str(run), "--output", str(tmp_path / "out")],
                                f"{run / 'config.yaml'}:2: YAML aliases"),
    }  # fmt: skip
    script = ("import contextlib, io, json, sys\nfrom icft.cli import main\nfor argv in json.loads(sys.argv[1]):\n"
              "    err = io.StringIO()\n    with contextlib.redirect_stderr(err):\n        rc = main(argv)\n"
              "    print(json.dumps([rc, err.getvalue()]))\n")  # every case in one process: torch loads once
    done = capped(script, [argv for argv, _ in cases.values()])
    assert done.returncode == 0, done.stderr[-2000:]
    for (case, (_, expected)), line in zip(cases.items(), done.stdout.splitlines()):
        rc, err = json.loads(line)
        assert rc == 2, (case, err[-2000:])
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and expected in err, (case, err)

    from icft.errors import ConfigError
    from icft.runs import run_config

    with pytest.raises(ConfigError, match="YAML aliases"):  # config_hash reads config.yaml through run_config
        run_config(run)


def test_huge_values_are_cut_in_error_messages(capsys):
    assert main(["train", "--set", "name=[" + ", ".join(["word"] * 5_000) + "]"]) == 2
    err = one_line_error(capsys)
    assert "config key 'name': expected str" in err and len(err) < 400


# --- 8. deep nesting, bad markers, resume with no checkpoint ---------------------------------------------


def test_deep_nesting_is_one_line(adapter_run, tmp_path, capsys, bert_tokenizer):
    from icft.errors import ConfigError
    from icft.runs import load_prompt_format, read_marker

    deep_yaml = tmp_path / "deep.yaml"
    deep_yaml.write_text("[" * 10_000 + "]" * 10_000)
    assert main(["train", "--config", str(deep_yaml)]) == 2
    assert f"{deep_yaml}: nested too deeply to read" in one_line_error(capsys)

    deep_json = "[" * 100_000 + "]" * 100_000
    (adapter_run / "summary.json").write_text(deep_json)
    assert main(["export", "--run", str(adapter_run), "--output", str(tmp_path / "out")]) == 2
    assert f"{adapter_run / 'summary.json'}: nested too deeply to read" in one_line_error(capsys)
    assert not (tmp_path / "out").exists()  # nothing half-written
    (adapter_run / "prompt_format.json").write_text(deep_json)
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_prompt_format(adapter_run, bert_tokenizer)
    (adapter_run / ".icft-run.json").write_text(deep_json)
    assert read_marker(adapter_run) == {}  # unreadable: still icft's folder


def test_a_marker_whose_owned_is_not_a_list_is_one_line(tmp_path, capsys):
    """It was a TypeError, and every later run in that folder failed the same way."""
    run = run_folder(tmp_path)
    for owned in (5, "config.yaml", [1, 2]):
        (run / ".icft-run.json").write_text(json.dumps({"icft_run": 1, "owned": owned}))
        assert main(["train", "--set", "model.name=/no/such/model", "--output-dir", str(run)]) == 2
        err = one_line_error(capsys)
        assert f"{run / '.icft-run.json'}: field 'owned' must be a list of file names" in err
        assert "delete it" in err
    (run / ".icft-run.json").unlink()  # what the message says to do: then the folder is not icft's, and says so
    assert main(["train", "--set", "model.name=/no/such/model", "--output-dir", str(run)]) == 2
    assert "not an icft run folder" in one_line_error(capsys)


def test_resume_before_the_first_checkpoint_says_to_train_again(tmp_path, capsys, monkeypatch):
    """It failed only after data and model had loaded, and did not say that training again works."""
    import icft.models

    monkeypatch.setattr(icft.models, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    run = run_folder(tmp_path)
    assert main(["train", "--resume", str(run)]) == 2
    err = one_line_error(capsys)
    assert f"--resume {run}: no checkpoint yet" in err
    assert f"icft train --config {run / 'config.yaml'} --output-dir {run}` again with the same config" in err


# --- 8. keys and origins; 7. prompts too long to tokenise ------------------------------------------------


class StandInTokenizer:
    def get_vocab(self) -> dict[str, int]:
        return {"a": 0, "abcd": 1, "##ing": 2}


class StandInEngine:
    """What create_app reads of an engine; building a prompt (tokenising) fails the test."""

    name, limit, retrieve_k, tokenizer = "tiny", 64, 0, StandInTokenizer()

    def chat_prompt(self, *args, **kwargs):
        pytest.fail("the prompt was tokenised")

    completion_prompt = chat_prompt


def call(app, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, dict]:
    """One request straight into the ASGI app: (status, JSON body)."""

    async def go() -> tuple[int, dict]:
        messages: list[dict] = []
        received = False

        async def receive() -> dict:
            nonlocal received
            if received:
                await asyncio.sleep(3600)
            received = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict) -> None:
            messages.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
                 "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
                 "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}  # fmt: skip
        await asyncio.wait_for(app(scope, receive, send), 30)
        return messages[0]["status"], json.loads(b"".join(m.get("body", b"") for m in messages[1:]))

    return asyncio.run(go())


HOST = {"host": "127.0.0.1:8000"}


def test_a_non_ascii_api_key_is_refused_at_startup(capsys, monkeypatch):
    """Clients send the key UTF-8 encoded and Starlette reads the header as latin-1: it could never match."""
    import icft.inference.generate

    monkeypatch.setattr(icft.inference.generate.Engine, "load", lambda *a, **k: pytest.fail("the model loaded"))
    for key in ("clé-secrète", "two words", "tab\there"):
        assert main(["serve", "--model", "/no/such/model", "--api-key", key]) == 2
        assert "--api-key (or ICFT_API_KEY): use printable ASCII" in one_line_error(capsys)
    from icft.inference.generate import InputError
    from icft.inference.serve import create_app

    with pytest.raises(InputError):
        create_app(StandInEngine(), api_key="clé")


def test_the_origin_check_compares_the_scheme():
    from icft.inference.serve import create_app

    app = create_app(StandInEngine())
    for origin in ("evil://127.0.0.1:8000", "file://127.0.0.1:8000", "null", "http://127.0.0.1:8001"):
        status, body = call(app, "GET", "/health", {**HOST, "origin": origin})
        assert status == 403 and body["error"]["code"] == "forbidden_origin", origin
    # its own page, served directly or through a TLS proxy that keeps the Host
    for origin in ("http://127.0.0.1:8000", "https://127.0.0.1:8000"):
        assert call(app, "GET", "/health", {**HOST, "origin": origin})[0] == 200, origin
    assert call(app, "GET", "/health", HOST)[0] == 200


def test_a_megabyte_prompt_is_refused_before_it_is_tokenised():
    from icft.inference.serve import create_app

    app = create_app(StandInEngine())  # context 64 tokens of at most 5 characters: 320 characters
    json_headers = {**HOST, "content-type": "application/json"}
    big = "word " * 200_000
    for path, body in (("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": big}]}),
                       ("/v1/completions", {"model": "tiny", "prompt": ["hi", big]})):  # fmt: skip
        status, answer = call(app, "POST", path, json_headers, json.dumps(body).encode())
        assert status == 400 and answer["error"]["code"] == "context_length_exceeded", answer
        assert "64 tokens" in answer["error"]["message"]
    spaces = {"model": "tiny", "prompt": " " * 100_000 + "x", "max_tokens": 1}  # no tokens in the spaces: not refused
    from icft.inference.serve import _check_prompt_size

    _check_prompt_size([spaces["prompt"]], 320, 64, "prompt")


# --- 4. slow clients ------------------------------------------------------------------------------------


@contextlib.contextmanager
def guarded_server(cap: int, read_s: float):
    """A real uvicorn server on a free loopback port with icft's guarded protocol, in a thread."""
    import uvicorn

    from icft.inference.serve import create_app, guarded_protocol

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(create_app(StandInEngine()), host="127.0.0.1", port=port, log_level="critical",
                            http=guarded_protocol(cap=cap, read_s=read_s))  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60  # a start-up wait, not a measure: a slow machine only waits longer
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def slow_connection(port: int) -> socket.socket:
    c = socket.create_connection(("127.0.0.1", port), timeout=30)
    c.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the rest
    return c


def closed_by_server(c: socket.socket) -> bool:
    """The server closed it (a FIN reads as b"", an abort's RST as a reset); a timeout means it is still open."""
    try:
        return c.recv(1) == b""
    except ConnectionResetError:
        return True


def health(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as fast:
        fast.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        return fast.recv(65536)


def test_past_the_cap_the_longest_waiting_connections_are_dropped_and_health_answers():
    """Six connections that never finish their request, on a server capped at four (the read deadline far off):
    the 5th, the 6th and a real client each push out the longest waiting one; the three newest stay open."""
    with guarded_server(cap=4, read_s=600) as port:
        slow = [slow_connection(port) for _ in range(6)]
        try:
            assert health(port).startswith(b"HTTP/1.1 200")
            assert [closed_by_server(c) for c in slow[:3]] == [True] * 3  # oldest first
            for c in slow[3:]:
                c.settimeout(0.5)
                with pytest.raises(TimeoutError):  # still open: nothing to read, and not closed
                    closed_by_server(c)
        finally:
            for c in slow:
                c.close()


def test_a_request_not_read_in_full_by_the_deadline_is_closed():
    """uvicorn alone waits for a request's head forever; here a connection still reading after `read_s` (1 s;
    the wait below is 30 s, far more than any machine needs) is closed, and /health answers meanwhile."""
    with guarded_server(cap=100, read_s=1.0) as port:
        slow = [slow_connection(port) for _ in range(3)]
        try:
            assert health(port).startswith(b"HTTP/1.1 200")
            assert [closed_by_server(c) for c in slow] == [True] * 3  # by the server, not timed out here
        finally:
            for c in slow:
                c.close()


def test_server_logs_hold_one_line_per_kind_a_second(capsys):
    from icft.inference.serve import OncePerSecond

    log = logging.getLogger("icft-test-flood")
    log.propagate = False
    handler = logging.StreamHandler(sys.stderr)
    log.addHandler(handler)
    now = [0.0]  # the filter's clock, moved by hand: the test does not depend on how fast 5000 calls run
    log.addFilter(OncePerSecond(clock=lambda: now[0]))
    try:
        for _ in range(5000):
            try:
                raise OSError(24, "Too many open files")
            except OSError:
                log.exception("socket.accept() out of system resource")
        lines = capsys.readouterr().err.splitlines()
        assert len([x for x in lines if "out of system resource" in x]) == 1
        assert len(lines) < 30  # the first one's traceback, and nothing after it
        now[0] += 1.05
        try:
            raise OSError(24, "Too many open files")
        except OSError:
            log.exception("socket.accept() out of system resource")
        again = capsys.readouterr().err.strip().splitlines()
        assert len(again) == 1 and "OSError: [Errno 24] Too many open files" in again[0] and "left out" in again[0]
    finally:
        log.removeHandler(handler)


def test_serve_raises_the_open_files_limit_and_caps_connections_below_it():
    import resource

    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 1024:
        pytest.skip("this machine's hard limit on open files is below the 1024 the test sets")
    code = ("import resource\nresource.setrlimit(resource.RLIMIT_NOFILE, (256, 1024))\n"
            "from icft.inference.serve import connection_cap, raise_open_files_limit\n"
            "soft = raise_open_files_limit()\n"
            "print(soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0], connection_cap(soft))\n")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    soft, now, cap = map(int, done.stdout.split())
    assert soft == now == 1024 and 8 < cap < 1024 - 128
