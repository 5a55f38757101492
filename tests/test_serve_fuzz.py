"""Schemathesis against the server's own /openapi.json: bounded (a fixed number of examples per route, a fixed
seed), with an API key set, over a real `icft serve` subprocess.

Every response must be a documented status with a body matching its documented schema, no 5xx, and the server
must be healthy afterwards. The figures (requests sent, statuses seen) print at the end (`pytest -s`).
Hypothesis's seed is fixed, so a given schema gets the same requests every run.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict

import pytest
import schemathesis
from _serve_server import Server, long_llama, request
from hypothesis import HealthCheck, Phase, given, seed, settings
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import positive_data_acceptance

KEY = "fuzz-key"
# per route and generation mode (valid bodies; invalid ones for the POST routes); ICFT_FUZZ_EXAMPLES runs more
EXAMPLES = int(os.environ.get("ICFT_FUZZ_EXAMPLES", "40"))
SEED = 20240
SEEN: dict[str, Counter] = defaultdict(Counter)  # route and mode -> status -> requests
CODES: Counter = Counter()  # mode and error code -> requests


@pytest.fixture(scope="module")
def server(tmp_path_factory, bert_tokenizer):
    folder = tmp_path_factory.mktemp("serve-fuzz")
    model = long_llama(folder / "model", bert_tokenizer)
    # a short context: fuzzed max_tokens stay small, so each request takes milliseconds
    running = Server(model, folder, "--api-key", KEY, "--max-length", "64", "--queue-size", "64")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def api_schema(server):
    config = SchemathesisConfig.from_dict({"seed": SEED, "headers": {"Authorization": f"Bearer {KEY}"}})
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json", config=config)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_fuzz(api_schema, mode):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.label for op in operations} == {"GET /health", "GET /v1/models", "POST /v1/chat/completions",
                                               "POST /v1/completions"}  # fmt: skip
    for operation in operations:
        if mode == GenerationMode.NEGATIVE and operation.method.upper() == "GET":
            continue  # a GET without parameters has nothing to get wrong

        @seed(SEED)
        @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(case=operation.as_strategy(generation_mode=mode))
        def fuzz(case):
            response = case.call(headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
            SEEN[f"{case.operation.label} {mode.value}"][response.status_code] += 1
            if response.status_code >= 400:
                CODES[f"{mode.value} {response.json()['error']['code']}"] += 1
            # The schema cannot say which stop strings this model's tokenizer can end with, nor which prompts fit
            # the context in tokens: valid-looking bodies may get a (documented) 400, so that check is left out.
            case.validate_response(response, excluded_checks=[positive_data_acceptance])

        fuzz()


def test_healthy_after_fuzzing(server):
    total = Counter()
    for label, statuses in sorted(SEEN.items()):
        total.update(statuses)
        print(f"fuzz {label}: {sum(statuses.values())} requests, statuses {dict(sorted(statuses.items()))}")
    print(f"fuzz total: {sum(total.values())} requests, statuses {dict(sorted(total.items()))}")
    print(f"fuzz error codes: {dict(CODES.most_common())}")
    # the GET routes take no parameters: one request each says all there is to say
    assert sum(total.values()) >= 4 * EXAMPLES + 2, "the fuzz test above did not run every route"
    assert not [s for s in total if s >= 500], total
    status, _, health = request(f"{server.url}/health")
    assert status == 200 and health["queued"] == 0 and health["running"] == 0
    status, _, answer = request(f"{server.url}/v1/completions", {"model": "tiny", "prompt": "Hello", "max_tokens": 3},
                                {"authorization": f"Bearer {KEY}"})  # fmt: skip
    assert status == 200 and answer["usage"]["completion_tokens"] <= 3
    assert "Traceback" not in server.output()
