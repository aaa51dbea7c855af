"""The gateway against its own OpenAPI description (GET /openapi.json), and fuzzed: no 5xx but 503 while Kafka is down.

Both passes run over real HTTP against the real gateway (aiohttp on a loopback port, in a thread), with the real
Kafka broker and ClickHouse server of the test stack, and with Kafka unreachable (a closed port on 127.0.0.1):
- schemathesis (its Python API) generates requests from /openapi.json, valid and invalid (bodies, query strings,
  path parameters, headers), a bounded number per operation;
- a hypothesis pass sends what no schema describes: arbitrary body bytes under assorted content types and
  charsets, arbitrary header bytes for the key and the idempotency key, arbitrary query strings and paths.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator

import orjson
import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.specs.openapi.checks import status_code_conformance
from test_gateway import Clock, closed_port, gw_settings, publisher  # noqa: F401  (fixtures)

from streams.domain.credentials import load_credentials
from streams.domain.reference import load_reference
from whistle.edges.gateway import build_app, gateway_publisher

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]

FUZZ_KEY = f"key-fuzz-{uuid.uuid4().hex}"
EXAMPLES = 20  # per operation and generation mode
ENDPOINTS = ("/v1/camera/detections", "/v1/hotline/tickets", "/v1/cases/S01-20250612-0123456789/actions", "/open311/v2/services.json",
             "/open311/v2/requests.json", "/open311/v2/requests/o311-x.json", "/open311/v2/requests/o311-x/feedback.json", "/openapi.json",
             "/open311/v2/services/garbage.xml", "/open311/v2/tokens/o311-x.json", "/open311/v2/requests.xml")


@pytest.fixture(scope="module")
def fuzz_keys(tmp_path_factory):
    path = tmp_path_factory.mktemp("contract") / "keys.yaml"
    path.write_text(orjson.dumps({"keys": [{"integrator": "fuzzer", "sha256": hashlib.sha256(FUZZ_KEY.encode()).hexdigest(),
                                            "sources": ["camera", "hotline", "app"], "rate_per_second": 1e9, "burst": 10**9,
                                            "units": ["S01"], "below": True}]}).decode())
    return load_credentials(path, load_reference())


@pytest.fixture(scope="module")
def down_settings(gw_settings):
    """The gateway's settings with Kafka unreachable, and a short bound on waiting for it (a fuzz run sends many)."""
    kafka = dataclasses.replace(gw_settings.kafka, bootstrap_servers=f"127.0.0.1:{closed_port()}")
    return dataclasses.replace(gw_settings, kafka=kafka, gateway_kafka_timeout_s=0.3)


@pytest.fixture(scope="module")
def live_gateway(gw_settings, publisher, fuzz_keys):
    with running(build_app(gw_settings, publisher, fuzz_keys, Clock())) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def dead_gateway(down_settings, fuzz_keys):
    with gateway_publisher(down_settings) as dead, running(build_app(down_settings, dead, fuzz_keys, Clock())) as base_url:
        yield base_url


@contextlib.contextmanager
def running(app: web.Application) -> Iterator[str]:
    """Serve `app` on a free loopback port from a thread of its own; the base URL."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None)
    port = closed_port()
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, name="gateway-under-test", daemon=True)
    thread.start()
    assert ready.wait(15)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(15)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(15)


def explore(strategy: st.SearchStrategy, examples: int, test: Callable) -> None:
    """Run `test` on `examples` generated values (no shrinking, no example database: bounded time)."""
    bounded = settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate], derandomize=True,
                       suppress_health_check=list(HealthCheck))
    bounded(given(strategy)(test))()


def caller(label: str, base_url: str, session: requests.Session, seen: collections.Counter) -> Callable:
    def call(case):
        response = case.call(base_url=base_url, session=session, headers={"X-API-Key": FUZZ_KEY}, timeout=10)
        seen[(label, response.status_code)] += 1
        if response.status_code < 500:  # a 5xx is reported by the caller, with every status seen
            case.validate_response(response, checks=[status_code_conformance])

    return call


def schemathesis_pass(base_url: str, examples: int) -> tuple[collections.Counter, int]:
    """Every operation of /openapi.json, valid and invalid requests; (status counts by operation, examples run)."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    seen: collections.Counter = collections.Counter()
    session = requests.Session()
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            try:
                explore(operation.as_strategy(generation_mode=mode), examples, caller(operation.label, base_url, session, seen))
            except Unsatisfiable:  # negative mode on an operation without parameters or body: nothing to make invalid
                assert mode is schemathesis.GenerationMode.NEGATIVE
    return seen, sum(seen.values())


def test_openapi_describes_every_endpoint_and_status_from_the_schemas(live_gateway):
    document = requests.get(f"{live_gateway}/openapi.json", timeout=10).json()
    assert document["openapi"].startswith("3.")
    camera = document["paths"]["/v1/camera/detections"]["post"]
    body = camera["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["detection_id"]["pattern"] == "^[A-Za-z0-9._:-]{1,128}$"
    assert body["properties"]["confidence"]["maximum"] == 1.0 and "garbage" in body["properties"]["category"]["enum"]
    assert {"202", "400", "401", "403", "413", "429", "503"} <= set(camera["responses"])
    assert "Retry-After" in camera["responses"]["503"]["headers"]
    assert set(document["paths"]) == {"/v1/camera/detections", "/v1/hotline/tickets", "/v1/cases/{case_id}/actions",
                                      "/open311/v2/services.json", "/open311/v2/requests.json", "/open311/v2/requests/{service_request_id}.json",
                                      "/open311/v2/requests/{service_request_id}/feedback.json", "/open311/v2/services/{service_code}.json",
                                      "/open311/v2/tokens/{token}.json", "/openapi.json"}
    action = document["paths"]["/v1/cases/{case_id}/actions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert not {"case_id", "at", "actor", "report_id"} & set(action["properties"]) and "unit_id" not in action["required"]
    query = {p["name"] for p in document["paths"]["/open311/v2/requests.json"]["get"]["parameters"]}
    assert query == {"jurisdiction_id", "service_request_id", "service_code", "start_date", "end_date", "status", "page", "page_size"}


def test_schemathesis_finds_no_server_error_with_kafka_up_and_only_503_with_kafka_down(live_gateway, dead_gateway):
    started = time.monotonic()
    up, up_examples = schemathesis_pass(live_gateway, EXAMPLES)
    down, down_examples = schemathesis_pass(dead_gateway, EXAMPLES // 2)
    print(f"\nschemathesis: {up_examples} requests with Kafka up, {down_examples} with Kafka down, {time.monotonic() - started:.1f} s")
    for name, seen in (("up", up), ("down", down)):
        print(f"  Kafka {name}: " + ", ".join(f"{label} {status}x{n}" for (label, status), n in sorted(seen.items())))
    assert not [key for key in up if key[1] >= 500], up
    assert not [key for key in down if key[1] >= 500 and key[1] != 503], down
    assert any(status == 202 for _, status in up) and any(status == 503 for _, status in down)


# ---------------------------------------------------------------------------------------------- beyond the schema

CONTENT_TYPES = st.sampled_from(["application/json", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                                 "multipart/form-data", "text/plain", "application/octet-stream", ""])
CHARSETS = st.sampled_from(["", "; charset=utf-8", "; charset=latin-1", "; charset=ascii", "; charset=utf-16", "; charset=klingon",
                            "; charset=", "; charset=\"utf-8\"", "; charset=idna", "; charset=rot13", "; charset=utf-7"])
# header values an HTTP client can send at all: no leading whitespace, no CR, LF or NUL
HEADER_BYTES = st.binary(min_size=1, max_size=300).map(lambda b: b.lstrip(b" \t\x0b\x0c")).filter(lambda b: b and not set(b) & set(b"\r\n\x00"))
FORM_BODIES = st.lists(st.tuples(st.sampled_from(["service_code", "lat", "long", "email", "description", "api_key", "media_url", "x", "attribute[a]"]),
                                 st.binary(max_size=40)), max_size=8).map(
    lambda pairs: "&".join(f"{name}={urllib.parse.quote_from_bytes(value)}" for name, value in pairs).encode())
REQUESTS = st.fixed_dictionaries({
    "method": st.sampled_from(["GET", "POST", "POST", "GET", "PUT", "DELETE"]),
    "path": st.sampled_from(ENDPOINTS) | st.text(max_size=40).map(lambda t: "/open311/v2/requests/" + urllib.parse.quote(t, safe="") + ".json"),
    "query": st.lists(st.tuples(st.sampled_from(["service_request_id", "start_date", "end_date", "status", "service_code", "api_key", "x"]),
                                st.binary(max_size=40)), max_size=5),
    "content_type": st.tuples(CONTENT_TYPES, CHARSETS).map("".join),
    "body": st.binary(max_size=400) | FORM_BODIES | st.sampled_from([b"{}", b"[]", b"null", b'{"detection_id": "\\ud800"}', b"1e999"]),
    "api_key": st.none() | st.just(FUZZ_KEY.encode()) | HEADER_BYTES,
    "idempotency_key": st.none() | HEADER_BYTES,
})


def raw_fuzz(base_url: str, examples: int) -> collections.Counter:
    seen: collections.Counter = collections.Counter()
    session = requests.Session()

    def send(request):
        query = "&".join(f"{name}={urllib.parse.quote_from_bytes(value)}" for name, value in request["query"])
        headers = {"Content-Type": request["content_type"]}
        if request["api_key"] is not None:
            headers["X-API-Key"] = request["api_key"]
        if request["idempotency_key"] is not None:
            headers["Idempotency-Key"] = request["idempotency_key"]
        response = session.request(request["method"], f"{base_url}{request['path']}" + (f"?{query}" if query else ""),
                                   data=request["body"], headers=headers, timeout=10)
        seen[response.status_code] += 1
        assert response.status_code < 500 or response.status_code == 503, (request, response.status_code, response.text)

    explore(REQUESTS, examples, send)
    return seen


def test_fuzzed_bodies_headers_and_query_strings_get_no_server_error(live_gateway, dead_gateway):
    up = raw_fuzz(live_gateway, 300)
    down = raw_fuzz(dead_gateway, 100)
    print(f"\nraw fuzz statuses: Kafka up {dict(up)}, Kafka down {dict(down)}")
    assert not [status for status in up if status >= 500]
