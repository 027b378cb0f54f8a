"""The fuzz tier: generated input against a running `campaign-express serve`
(demo data, embedded backends), with and without credentials. Expected 5xx
answers over REST, and INTERNAL/UNKNOWN answers over gRPC: zero.

- REST: schemathesis generates requests for every operation of the gateway's
  own /openapi.json (valid and invalid by the schema).
- gRPC: hypothesis generates protobuf bytes for every unary RPC: messages built
  from the method's request descriptor with arbitrary field values, the same
  messages cut short or with bytes flipped, and plain random bytes.

CI runs a bounded slice (CAMPAIGN_EXPRESS_FUZZ_EXAMPLES, default 4 examples per
operation and credential); `make test-fuzz` runs 200."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import requests
import schemathesis
from google.protobuf import descriptor, message_factory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.openapi import build_openapi, load_descriptor_set
from services.host.platform import load_modules
from tests.backend_servers import free_port

pytestmark = pytest.mark.fuzz

EXAMPLES = int(os.environ.get("CAMPAIGN_EXPRESS_FUZZ_EXAMPLES", "4"))
ROOT = pathlib.Path(__file__).resolve().parent.parent
API_KEY = "cx_fuzz-demo-admin-key-0123456789"
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same slice every run; raise the count to explore
    suppress_health_check=list(HealthCheck),
    database=None,
)


class Server:
    def __init__(self, tmp: pathlib.Path) -> None:
        self.http_port, self.grpc_port = free_port(), free_port()
        self.log = tmp / "serve.log"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/tmp"),
            "PYTHONUNBUFFERED": "1",
            "CAMPAIGN_EXPRESS_DEMO_API_KEY": API_KEY,
        }
        script = pathlib.Path(sys.executable).parent / "campaign-express"
        self._output = self.log.open("wb")
        self.process = subprocess.Popen(
            [
                str(script),
                "serve",
                "--demo",
                "--data-dir",
                str(tmp / "data"),
                "--host",
                "127.0.0.1",
                "--http-port",
                str(self.http_port),
                "--grpc-port",
                str(self.grpc_port),
                "--metrics-port",
                "0",
                "--rate-limit-per-second",
                "0",
                "--shutdown-grace-seconds",
                "1",
            ],
            cwd=ROOT,
            env=env,
            stdout=self._output,
            stderr=subprocess.STDOUT,
        )
        self.base_url = f"http://127.0.0.1:{self.http_port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"serve exited:\n{self.log_tail()}")
            if "admin API key" in self.log.read_text(errors="replace"):
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"serve did not start:\n{self.log_tail()}")

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._output.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("fuzz"))
    try:
        yield running
    finally:
        running.stop()


CREDENTIALS = {"anonymous": {}, "admin": {"Authorization": f"Bearer {API_KEY}"}}
# The document the gateway serves (checked below), built the same way, so the
# operations are known when tests are collected.
OPENAPI = build_openapi(load_descriptor_set())
OPERATIONS = [
    result.ok() for result in schemathesis.openapi.from_dict(OPENAPI).get_all_operations()
]
MODES = [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]


def test_the_served_document_is_the_one_fuzzed(server: Server) -> None:
    served = requests.get(f"{server.base_url}/openapi.json", timeout=10).json()
    assert served == OPENAPI


@pytest.mark.parametrize("operation", OPERATIONS, ids=[op.label for op in OPERATIONS])
def test_rest_operations_never_answer_5xx(operation: Any, server: Server) -> None:
    cases = st.one_of(*(operation.as_strategy(generation_mode=mode) for mode in MODES))

    @FUZZ_SETTINGS
    @given(cases)
    def check(case: Any) -> None:
        for who, headers in CREDENTIALS.items():
            response = case.call(base_url=server.base_url, headers=headers, timeout=30)
            assert response.status_code < 500, (
                f"{who}: {case.method} {case.formatted_path} -> {response.status_code} "
                f"{response.text[:500]}\n{case.as_curl_command()}\n{server.log_tail()}"
            )

    check()
    assert server.process.poll() is None, server.log_tail()


# -------------------------------------------------------------------------- gRPC


def unary_methods() -> list[tuple[str, descriptor.MethodDescriptor]]:
    return [
        (f"/{service.full_name}/{method.name}", method)
        for module in load_modules().values()
        for service in module.services
        for method in service.descriptor.methods
        if not (method.client_streaming or method.server_streaming)
    ]


UNARY = unary_methods()
SCALARS: dict[int, st.SearchStrategy[Any]] = {
    descriptor.FieldDescriptor.TYPE_DOUBLE: st.floats(allow_nan=True, allow_infinity=True),
    descriptor.FieldDescriptor.TYPE_FLOAT: st.floats(width=32, allow_nan=True),
    descriptor.FieldDescriptor.TYPE_INT64: st.integers(-(2**63), 2**63 - 1),
    descriptor.FieldDescriptor.TYPE_UINT64: st.integers(0, 2**64 - 1),
    descriptor.FieldDescriptor.TYPE_INT32: st.integers(-(2**31), 2**31 - 1),
    descriptor.FieldDescriptor.TYPE_FIXED64: st.integers(0, 2**64 - 1),
    descriptor.FieldDescriptor.TYPE_FIXED32: st.integers(0, 2**32 - 1),
    descriptor.FieldDescriptor.TYPE_BOOL: st.booleans(),
    descriptor.FieldDescriptor.TYPE_STRING: st.one_of(
        st.text(max_size=40),
        st.sampled_from(["tenants/acme", "tenants/demo", "tenants/demo/users/x", "*", ""]),
    ),
    descriptor.FieldDescriptor.TYPE_BYTES: st.binary(max_size=40),
    descriptor.FieldDescriptor.TYPE_UINT32: st.integers(0, 2**32 - 1),
    descriptor.FieldDescriptor.TYPE_SFIXED32: st.integers(-(2**31), 2**31 - 1),
    descriptor.FieldDescriptor.TYPE_SFIXED64: st.integers(-(2**63), 2**63 - 1),
    descriptor.FieldDescriptor.TYPE_SINT32: st.integers(-(2**31), 2**31 - 1),
    descriptor.FieldDescriptor.TYPE_SINT64: st.integers(-(2**63), 2**63 - 1),
}


def message_bytes(message: descriptor.Descriptor, depth: int = 0) -> st.SearchStrategy[bytes]:
    """Serialized messages of type `message` with arbitrary field values."""
    cls = message_factory.GetMessageClass(message)

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        instance = cls()
        for field in message.fields:
            if not draw(st.booleans()):
                continue
            if field.message_type is not None:
                if depth >= 2 or field.message_type.GetOptions().map_entry:
                    continue
                values = [draw(message_bytes(field.message_type, depth + 1))]
                if field.is_repeated:
                    getattr(instance, field.name).add().MergeFromString(values[0])
                else:
                    getattr(instance, field.name).MergeFromString(values[0])
                continue
            if field.enum_type is not None:
                value = draw(st.sampled_from([v.number for v in field.enum_type.values] + [999]))
            else:
                value = draw(SCALARS[field.type])
            try:
                if field.is_repeated:
                    getattr(instance, field.name).append(value)
                else:
                    setattr(instance, field.name, value)
            except (TypeError, ValueError):
                continue  # upb refuses it (e.g. a lone surrogate): not a message
        return bytes(instance.SerializeToString())

    return build()


def damaged(data: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    @st.composite
    def damage(draw: st.DrawFn) -> bytes:
        raw = bytearray(draw(data))
        if raw and draw(st.booleans()):
            del raw[draw(st.integers(0, len(raw) - 1)) :]
        if raw:
            raw[draw(st.integers(0, len(raw) - 1))] ^= draw(st.integers(1, 255))
        return bytes(raw)

    return damage()


@pytest.fixture(scope="module")
def channel(server: Server) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as opened:
        yield opened


SERVER_FAULTS = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS)


@pytest.mark.parametrize(("path", "method"), UNARY, ids=[p for p, _ in UNARY])
def test_grpc_requests_never_fail_as_server_faults(
    path: str, method: descriptor.MethodDescriptor, server: Server, channel: grpc.Channel
) -> None:
    call = channel.unary_unary(path)
    request = message_bytes(method.input_type)

    @FUZZ_SETTINGS
    @given(st.one_of(request, damaged(request), st.binary(max_size=200)))
    def check(data: bytes) -> None:
        for who, headers in CREDENTIALS.items():
            metadata = [(k.lower(), v) for k, v in headers.items()]
            try:
                call(data, metadata=metadata, timeout=30)
            except grpc.RpcError as failed:
                assert failed.code() not in SERVER_FAULTS, (
                    f"{who}: {path} with {data!r} -> {failed.code()} {failed.details()}\n"
                    f"{server.log_tail()}"
                )

    check()
    assert server.process.poll() is None, server.log_tail()
