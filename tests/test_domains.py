"""Every registered domain runs alone (`--services X`): its services are served
and healthy, the others are not, and none of its RPCs fails for want of a
part (INTERNAL, UNKNOWN or UNIMPLEMENTED), whatever the request."""

from __future__ import annotations

import ast
import pathlib
from typing import Any

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.host.domains import DOMAINS
from services.host.platform import load_modules
from services.host.serve import start
from tests.conftest import make_settings, seed_tenants

MODULES = load_modules()


def test_the_host_names_no_domain() -> None:
    """The host reaches domains only through its list (services/host/domains.py)."""
    host = pathlib.Path(__file__).parent.parent / "services" / "host"
    for source in host.glob("*.py"):
        text = source.read_text()
        for name in DOMAINS:
            assert f"services.{name}" not in text, f"{source.name} imports services.{name}"
    kernel = pathlib.Path(__file__).parent.parent / "services" / "kernel"
    for source in kernel.glob("*.py"):
        for name in DOMAINS:
            assert f"services.{name}" not in source.read_text(), source.name


@pytest.mark.parametrize("name", DOMAINS)
async def test_each_domain_runs_alone(tmp_path: pathlib.Path, name: str) -> None:
    running = await start(make_settings(tmp_path, services=name))
    try:
        keys = await seed_tenants(running)
        own = MODULES[name].service_names
        others = [s for m in MODULES.values() if m.name != name for s in m.service_names]
        async with aio.insecure_channel(f"127.0.0.1:{running.platform.grpc_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in own:
                reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
            for service in others:
                with pytest.raises(aio.AioRpcError) as caught:
                    await health.Check(health_pb2.HealthCheckRequest(service=service))
                assert caught.value.code() == grpc.StatusCode.NOT_FOUND, service
            listed = set()
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            async for answer in reflection.ServerReflectionInfo(iter([request])):
                listed |= {s.name for s in answer.list_services_response.service}
            assert set(own) <= listed and not set(others) & listed
            metadata = [("authorization", f"Bearer {keys['acme']['ADMIN']}")]
            for service in MODULES[name].services:
                for method in service.descriptor.methods:
                    if method.client_streaming or method.server_streaming:
                        continue
                    call = channel.unary_unary(f"/{service.full_name}/{method.name}")
                    try:
                        await call(b"", metadata=metadata, timeout=20)
                    except aio.AioRpcError as failed:
                        assert failed.code() not in (
                            grpc.StatusCode.INTERNAL,
                            grpc.StatusCode.UNKNOWN,
                            grpc.StatusCode.UNIMPLEMENTED,
                        ), (method.full_name, failed.code(), failed.details())
    finally:
        await running.stop()


def _imports(root: pathlib.Path) -> dict[str, set[str]]:
    """Module -> the services.* modules it imports (anywhere in the file,
    TYPE_CHECKING blocks and function bodies included)."""
    graph: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.startswith("services."):
                    found.add(node.module)
                    found |= {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("services.")}
        graph[name] = found
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


SERVICES_ROOT = pathlib.Path(__file__).parent.parent / "services"


def test_no_import_circle_under_services() -> None:
    graph = _imports(SERVICES_ROOT)
    # A package's __init__ re-exporting its modules is not a circle of its own.
    modules = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}
    assert _cycle(modules) is None, _cycle(modules)
    # Nor between packages (domains, kernel, host, shared libraries).
    packages: dict[str, set[str]] = {}
    for module, deps in graph.items():
        package = ".".join(module.split(".")[:2])
        packages.setdefault(package, set()).update(
            ".".join(d.split(".")[:2]) for d in deps if ".".join(d.split(".")[:2]) != package
        )
    assert _cycle(packages) is None, _cycle(packages)
    assert "services.host" not in packages["services.kernel"]


async def test_the_kernel_builds_each_interface_once_and_orders_the_lifecycle(
    tmp_path: pathlib.Path,
) -> None:
    from services.kernel import Kernel, open_backends
    from tests.conftest import make_settings

    events: list[str] = []

    def hooks(name: str) -> tuple[Any, Any]:
        async def start() -> None:
            events.append(f"start {name}")

        async def stop() -> None:
            events.append(f"stop {name}")

        return start, stop

    def clock(kernel: Kernel) -> object:
        kernel.lifecycle(*hooks("clock"))
        return object()

    def loop(kernel: Kernel) -> object:
        return kernel.interface("loop")

    settings = make_settings(tmp_path)
    backends = await open_backends(settings)
    kernel = Kernel(
        settings,
        backends,
        {"a": {"clock": clock, "loop": loop}, "b": {"uses_clock": lambda k: k.interface("clock")}},
        lambda domain: None,
    )
    assert kernel.interface("uses_clock") is kernel.interface("clock")
    with pytest.raises(RuntimeError, match="depends on itself"):
        kernel.interface("loop")
    with pytest.raises(LookupError):
        kernel.interface("nobody offers this")
    with pytest.raises(ValueError, match="offered by a and b"):
        Kernel(settings, backends, {"a": {"x": clock}, "b": {"x": clock}}, print)
    kernel.when_serving(*hooks("scheduler"))
    await kernel.start(serving=True)
    with pytest.raises(RuntimeError):
        kernel.lifecycle(*hooks("late"))
    await kernel.stop()
    await backends.close()
    assert events == ["start clock", "start scheduler", "stop scheduler", "stop clock"]
