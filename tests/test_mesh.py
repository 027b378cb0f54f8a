"""The edge proxy's Envoy bootstrap, mesh/envoy/edge.yaml.

Envoy cannot run here, so the file is loaded into Envoy's own API messages
(the xds-protos package) with unknown fields rejected, every typed_config is
unpacked into its real type, a subset of Envoy's protoc-gen-validate rules is
checked, and the routes are matched against every RPC's gRPC path and every
google.api.http binding of the descriptor set.
"""

from __future__ import annotations

import copy
import importlib
import pathlib
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from envoy.extensions.filters.http.grpc_json_transcoder.v3 import transcoder_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)
from envoy.extensions.resource_monitors.downstream_connections.v3 import (
    downstream_connections_pb2,
)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.api import annotations_pb2
from google.protobuf import (
    any_pb2,
    descriptor_pb2,
    descriptor_pool,
    duration_pb2,
    json_format,
    message,
    message_factory,
)
from validate import validate_pb2

# The envoy.* imports above are Envoy's API messages (xds-protos). Importing them
# registers their types in the default descriptor pool, which json_format needs
# to resolve the `@type` of an Any; a type missing there fails the parse.

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the repo is not installed; tests/ may not be a package
    sys.path.insert(0, str(ROOT))
envoy_gen = importlib.import_module("mesh.envoy")

EDGE_YAML = ROOT / "mesh" / "envoy" / "edge.yaml"
DESCRIPTOR_SET = ROOT / "gen" / "campaignexpress" / "descriptor_set.binpb"
TRANSCODER = "envoy.filters.http.grpc_json_transcoder"

# Every typed config the edge must carry, by message class.
REQUIRED_TYPED_CONFIGS = {
    http_connection_manager_pb2.HttpConnectionManager,
    transcoder_pb2.GrpcJsonTranscoder,
    router_pb2.Router,
    http_protocol_options_pb2.HttpProtocolOptions,
    route_components_pb2.FilterConfig,
    stream_pb2.StdoutAccessLog,
    downstream_connections_pb2.DownstreamConnectionsConfig,
}


@pytest.fixture(scope="module")
def edge() -> dict[str, Any]:
    loaded = yaml.safe_load(EDGE_YAML.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def fds() -> descriptor_pb2.FileDescriptorSet:
    return descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes())


def _message_class(type_url: str) -> type[message.Message]:
    name = type_url.removeprefix("type.googleapis.com/")
    assert name != type_url, f"unexpected type URL {type_url}"
    return message_factory.GetMessageClass(descriptor_pool.Default().FindMessageTypeByName(name))


def _typed_dicts(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every dict with an `@type` (an Any) in a JSON-like tree, with its path."""
    if isinstance(node, dict):
        if "@type" in node:
            yield path, node
        for key, value in node.items():
            yield from _typed_dicts(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _typed_dicts(value, f"{path}[{index}]")


def _bootstrap(edge: dict[str, Any]) -> bootstrap_pb2.Bootstrap:
    return json_format.ParseDict(edge, bootstrap_pb2.Bootstrap(), ignore_unknown_fields=False)


def _transcoder_config(edge: dict[str, Any]) -> dict[str, Any]:
    found = [
        typed for _, typed in _typed_dicts(edge) if typed["@type"].endswith(".GrpcJsonTranscoder")
    ]
    assert len(found) == 1
    return found[0]


def _virtual_host(edge: dict[str, Any]) -> dict[str, Any]:
    (listener,) = edge["static_resources"]["listeners"]
    (chain,) = listener["filter_chains"]
    (hcm_filter,) = chain["filters"]
    hosts = hcm_filter["typed_config"]["route_config"]["virtual_hosts"]
    assert len(hosts) == 1 and hosts[0]["domains"] == ["*"]
    return dict(hosts[0])


# --------------------------------------------------------------------------
# (a) the file is a valid Bootstrap, typed configs included


def test_xds_protos_imports_with_installed_protobuf() -> None:
    # The gencode of xds-protos must load with the runtime protobuf (no
    # version error); the imports above already did, this documents it.
    assert bootstrap_pb2.Bootstrap.DESCRIPTOR.full_name == "envoy.config.bootstrap.v3.Bootstrap"


def test_edge_yaml_parses_as_bootstrap(edge: dict[str, Any]) -> None:
    bootstrap = _bootstrap(edge)
    assert len(bootstrap.static_resources.listeners) == 1
    assert bootstrap.admin.address.socket_address.address == "127.0.0.1"
    assert bootstrap.admin.address.socket_address.port_value == 9901


def test_every_typed_config_unpacks_into_its_type(edge: dict[str, Any]) -> None:
    seen: set[type[message.Message]] = set()
    for path, typed in _typed_dicts(edge):
        cls = _message_class(typed["@type"])
        body = {key: value for key, value in typed.items() if key != "@type"}
        try:
            json_format.ParseDict(body, cls(), ignore_unknown_fields=False)
        except json_format.ParseError as error:  # pragma: no cover - failure report
            pytest.fail(f"{path}: {error}")
        seen.add(cls)
    assert REQUIRED_TYPED_CONFIGS <= seen, REQUIRED_TYPED_CONFIGS - seen


def _any_messages(msg: message.Message) -> Iterator[any_pb2.Any]:
    for field, value in msg.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            values = list(value.values())
        elif field.is_repeated:
            values = list(value)
        else:
            values = [value]
        for item in values:
            if not isinstance(item, message.Message):
                continue
            if isinstance(item, any_pb2.Any):
                yield item
                inner = _message_class(item.type_url)()
                assert item.Unpack(inner)
                yield from _any_messages(inner)
            else:
                yield from _any_messages(item)


def test_parsed_anys_unpack(edge: dict[str, Any]) -> None:
    anys = list(_any_messages(_bootstrap(edge)))
    assert len(anys) == len(list(_typed_dicts(edge)))
    names = {item.TypeName() for item in anys}
    assert {cls.DESCRIPTOR.full_name for cls in REQUIRED_TYPED_CONFIGS} <= names


@pytest.mark.parametrize(
    ("key_path", "typo"),
    [
        (("convert_grpc_status",), "convert_grpc_stauts"),
        (("print_options", "preserve_proto_field_names"), "preserve_proto_field_name"),
        (("request_validation_options", "reject_unknown_method"), "reject_unknown_methods"),
    ],
)
def test_misspelled_transcoder_field_is_rejected(
    edge: dict[str, Any], key_path: tuple[str, ...], typo: str
) -> None:
    broken = copy.deepcopy(edge)
    node = _transcoder_config(broken)
    for key in key_path[:-1]:
        node = node[key]
    node[typo] = node.pop(key_path[-1])
    with pytest.raises(json_format.ParseError, match=typo):
        _bootstrap(broken)
    body = {k: v for k, v in _transcoder_config(broken).items() if k != "@type"}
    with pytest.raises(json_format.ParseError, match=typo):
        json_format.ParseDict(body, transcoder_pb2.GrpcJsonTranscoder())


def test_unknown_type_url_is_rejected(edge: dict[str, Any]) -> None:
    broken = copy.deepcopy(edge)
    _transcoder_config(broken)["@type"] = "type.googleapis.com/envoy.NoSuchTranscoder"
    with pytest.raises(json_format.ParseError):
        _bootstrap(broken)


# A subset of Envoy's protoc-gen-validate rules, which Envoy enforces on load.


def _numeric_violations(name: str, value: float, rules: message.Message) -> list[str]:
    out = []
    if getattr(rules, "ignore_empty", False) and value == 0:
        return out
    for op, check in (
        ("gt", value.__gt__),
        ("gte", value.__ge__),
        ("lt", value.__lt__),
        ("lte", value.__le__),
    ):
        if rules.HasField(op) and not check(getattr(rules, op)):
            out.append(f"{name}={value} violates {op} {getattr(rules, op)}")
    return out


def _pgv_violations(msg: message.Message, path: str = "") -> list[str]:
    out: list[str] = []
    desc = msg.DESCRIPTOR
    for oneof in desc.oneofs:
        if oneof.GetOptions().Extensions[validate_pb2.required]:
            if msg.WhichOneof(oneof.name) is None:
                out.append(f"{path}: one of {oneof.name} is required")
    for field in desc.fields:
        name = f"{path}.{field.name}"
        value = getattr(msg, field.name)
        options = field.GetOptions()
        # Rules of a oneof member (or a proto3 `optional`) apply only when it is set.
        unset_member = field.containing_oneof is not None and not msg.HasField(field.name)
        if options.HasExtension(validate_pb2.rules) and not unset_member:
            rules = options.Extensions[validate_pb2.rules]
            kind = rules.WhichOneof("type")
            typed_rules = getattr(rules, kind) if kind else None
            # `message` sits outside the `type` oneof of FieldRules.
            required = rules.message.required or (
                kind in ("duration", "any", "timestamp") and typed_rules.required
            )
            if required and not msg.HasField(field.name):
                out.append(f"{name} is required")
            if kind == "repeated" and len(value) < typed_rules.min_items:
                out.append(f"{name} needs {typed_rules.min_items} items")
            if not field.is_repeated:
                if kind == "string" and len(value) < typed_rules.min_len:
                    out.append(f"{name} is shorter than {typed_rules.min_len}")
                if kind == "duration" and msg.HasField(field.name):
                    seconds = value.ToTimedelta().total_seconds()
                    for op in ("gt", "gte", "lt", "lte"):
                        if typed_rules.HasField(op):
                            bound: duration_pb2.Duration = getattr(typed_rules, op)
                            limit = bound.ToTimedelta().total_seconds()
                            if not {
                                "gt": seconds > limit,
                                "gte": seconds >= limit,
                                "lt": seconds < limit,
                                "lte": seconds <= limit,
                            }[op]:
                                out.append(f"{name}={seconds}s violates {op} {limit}s")
                if kind in ("uint32", "uint64", "int32", "int64", "double", "float"):
                    if field.message_type is None:
                        out.extend(_numeric_violations(name, value, typed_rules))
                    elif msg.HasField(field.name):  # a wrapper such as UInt32Value
                        out.extend(_numeric_violations(name, value.value, typed_rules))
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            items = [(f"{name}[{k}]", v) for k, v in value.items()]
        elif field.is_repeated:
            items = [(f"{name}[{i}]", v) for i, v in enumerate(value)]
        elif msg.HasField(field.name):
            items = [(name, value)]
        else:
            items = []
        for item_path, item in items:
            if not isinstance(item, message.Message):
                continue
            if isinstance(item, any_pb2.Any):
                inner = _message_class(item.type_url)()
                item.Unpack(inner)
                out.extend(_pgv_violations(inner, f"{item_path}<{item.TypeName()}>"))
            else:
                out.extend(_pgv_violations(item, item_path))
    return out


def test_envoy_validation_rules_hold(edge: dict[str, Any]) -> None:
    assert _pgv_violations(_bootstrap(edge)) == []


@pytest.mark.parametrize(
    ("mutate", "violation"),
    [
        (lambda c: c["health_checks"][0].pop("interval"), "health_checks[0].interval is required"),
        (
            lambda c: c["health_checks"][0].pop("unhealthy_threshold"),
            "health_checks[0].unhealthy_threshold is required",
        ),
        (lambda c: c.update(connect_timeout="0s"), "connect_timeout=0.0s violates gt 0.0s"),
        (lambda c: c.update(name=""), "clusters[0].name is shorter than 1"),
    ],
)
def test_validation_rules_are_checked(
    edge: dict[str, Any], mutate: Callable[[dict[str, Any]], object], violation: str
) -> None:
    broken = copy.deepcopy(edge)
    mutate(broken["static_resources"]["clusters"][0])
    violations = _pgv_violations(_bootstrap(broken))
    assert any(v.endswith(violation) for v in violations), violations


# --------------------------------------------------------------------------
# (b) transcoded services == services of the descriptor set


def _descriptor_services(fds: descriptor_pb2.FileDescriptorSet) -> set[str]:
    return {
        f"{file.package}.{service.name}"
        for file in fds.file
        if file.package.startswith("campaignexpress.")
        for service in file.service
    }


def test_transcoder_services_are_the_descriptor_sets(
    edge: dict[str, Any], fds: descriptor_pb2.FileDescriptorSet
) -> None:
    services = _transcoder_config(edge)["services"]
    assert services == sorted(services), "services must be sorted (stable output)"
    assert set(services) == _descriptor_services(fds)
    assert len(services) >= 3


def test_transcoder_settings(edge: dict[str, Any]) -> None:
    config = json_format.ParseDict(
        {k: v for k, v in _transcoder_config(edge).items() if k != "@type"},
        transcoder_pb2.GrpcJsonTranscoder(),
    )
    assert config.proto_descriptor == "/etc/envoy/campaignexpress.binpb"
    assert config.convert_grpc_status
    assert not config.auto_mapping
    assert not config.match_incoming_request_route
    assert not config.ignore_unknown_query_parameters
    assert config.request_validation_options.reject_unknown_method
    assert config.request_validation_options.reject_unknown_query_parameters
    # lowerCamelCase JSON, as the built-in gateway writes it.
    assert not config.print_options.preserve_proto_field_names
    assert not config.print_options.always_print_primitive_fields


# --------------------------------------------------------------------------
# (c) every RPC and every REST binding is routed to the gRPC cluster


def _clusters(edge: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {cluster["name"]: cluster for cluster in edge["static_resources"]["clusters"]}


def _socket_address(cluster: dict[str, Any]) -> dict[str, Any]:
    (locality,) = cluster["load_assignment"]["endpoints"]
    (endpoint,) = locality["lb_endpoints"]
    return dict(endpoint["endpoint"]["address"]["socket_address"])


def _port(cluster: dict[str, Any]) -> int:
    return int(_socket_address(cluster)["port_value"])


def _host(cluster: dict[str, Any]) -> str:
    return str(_socket_address(cluster)["address"])


def _grpc_cluster_name(edge: dict[str, Any]) -> str:
    names = [
        name
        for name, cluster in _clusters(edge).items()
        if "http2_protocol_options"
        in cluster.get("typed_extension_protocol_options", {})
        .get("envoy.extensions.upstreams.http.v3.HttpProtocolOptions", {})
        .get("explicit_http_config", {})
    ]
    assert len(names) == 1
    return names[0]


def _first_route(routes: list[dict[str, Any]], path: str, grpc: bool) -> dict[str, Any] | None:
    """Envoy's first-match route selection, for the matchers this config may use."""
    for route in routes:
        match = route["match"]
        unsupported = set(match) - {"prefix", "path", "safe_regex", "grpc"}
        assert not unsupported, f"the test does not model {unsupported}"
        if "grpc" in match and not grpc:
            continue
        if "prefix" in match and path.startswith(match["prefix"]):
            return route
        if "path" in match and path == match["path"]:
            return route
        if "safe_regex" in match and re.fullmatch(match["safe_regex"]["regex"], path):
            return route
    return None


def _transcoder_disabled(route: dict[str, Any]) -> bool:
    per_filter = route.get("typed_per_filter_config", {}).get(TRANSCODER, {})
    return bool(per_filter.get("disabled", False))


def _sample_path(template: str) -> str:
    """A concrete request path that a google.api.http path template matches."""

    def fill(pattern: str) -> str:
        return "/".join(
            {"*": "x1", "**": "x2/x3"}.get(segment, segment) for segment in pattern.split("/")
        )

    def variable(m: re.Match[str]) -> str:
        return fill(m.group(2) or "*")

    return fill(re.sub(r"\{([^}=]*)(?:=([^}]*))?\}", variable, template).replace("{", ""))


def _bindings(fds: descriptor_pb2.FileDescriptorSet) -> list[tuple[str, str, str]]:
    """(grpc path, verb, path template) of every google.api.http binding."""
    out = []
    for file in fds.file:
        if not file.package.startswith("campaignexpress."):
            continue
        for service in file.service:
            for method in service.method:
                if not method.options.HasExtension(annotations_pb2.http):
                    continue
                rule = method.options.Extensions[annotations_pb2.http]
                for binding in [rule, *rule.additional_bindings]:
                    kind = binding.WhichOneof("pattern")
                    assert kind is not None
                    template = binding.custom.path if kind == "custom" else getattr(binding, kind)
                    grpc_path = f"/{file.package}.{service.name}/{method.name}"
                    out.append((grpc_path, kind, template))
    return out


def test_every_rpc_is_routed_to_the_grpc_cluster(
    edge: dict[str, Any], fds: descriptor_pb2.FileDescriptorSet
) -> None:
    routes = _virtual_host(edge)["routes"]
    grpc_cluster = _grpc_cluster_name(edge)
    rpcs = [
        f"/{file.package}.{service.name}/{method.name}"
        for file in fds.file
        if file.package.startswith("campaignexpress.")
        for service in file.service
        for method in service.method
    ]
    assert rpcs
    for rpc in rpcs:
        route = _first_route(routes, rpc, grpc=True)
        assert route is not None, f"no route for {rpc}"
        assert route["route"]["cluster"] == grpc_cluster, rpc


def test_every_rest_binding_is_transcoded_and_routed(
    edge: dict[str, Any], fds: descriptor_pb2.FileDescriptorSet
) -> None:
    routes = _virtual_host(edge)["routes"]
    grpc_cluster = _grpc_cluster_name(edge)
    transcoder = _transcoder_config(edge)
    # The route is re-selected on the transcoded gRPC path.
    assert transcoder["match_incoming_request_route"] is False
    bindings = _bindings(fds)
    assert len(bindings) >= 10
    for grpc_path, verb, template in bindings:
        service = grpc_path.split("/")[1]
        assert service in transcoder["services"], service
        sample = _sample_path(template)
        assert envoy_gen.template_regex(template).fullmatch(sample), (template, sample)
        # 1. The REST request reaches the transcoder: its route keeps it on.
        incoming = _first_route(routes, sample, grpc=False)
        assert incoming is not None, f"{verb.upper()} {sample}: no route"
        assert not _transcoder_disabled(incoming), f"{verb.upper()} {sample}: not transcoded"
        # 2. The transcoded gRPC request goes to the gRPC cluster.
        outgoing = _first_route(routes, grpc_path, grpc=True)
        assert outgoing is not None and outgoing["route"]["cluster"] == grpc_cluster


def test_gateway_endpoints_go_to_the_gateway_untranscoded(edge: dict[str, Any]) -> None:
    routes = _virtual_host(edge)["routes"]
    clusters = _clusters(edge)
    for path in ("/health", "/live", "/ready", "/openapi.json"):
        route = _first_route(routes, path, grpc=False)
        assert route is not None
        assert _port(clusters[route["route"]["cluster"]]) == 8080
        assert _transcoder_disabled(route)


def test_clusters(edge: dict[str, Any]) -> None:
    clusters = _clusters(edge)
    grpc = clusters[_grpc_cluster_name(edge)]
    assert _port(grpc) == 9090
    assert grpc["type"] in ("STRICT_DNS", "STATIC")
    (health_check,) = grpc["health_checks"]
    assert "grpc_health_check" in health_check
    (listener,) = edge["static_resources"]["listeners"]
    assert listener["address"]["socket_address"]["port_value"] == 10000
    filters = listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
    assert [f["name"] for f in filters] == [TRANSCODER, "envoy.filters.http.router"]


# --------------------------------------------------------------------------
# (d) no drift between the committed file and the generator


def test_committed_edge_yaml_is_up_to_date() -> None:
    expected = envoy_gen.generate(DESCRIPTOR_SET)
    assert EDGE_YAML.read_text(encoding="utf-8") == expected, (
        "mesh/envoy/edge.yaml is stale: run `python -m mesh.envoy`"
    )


def test_generator_is_deterministic_and_configurable(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "edge.yaml"
    assert envoy_gen.main(["--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == EDGE_YAML.read_text(encoding="utf-8")
    assert envoy_gen.main(["--out", str(out), "--check"]) == 0
    custom = tmp_path / "custom.yaml"
    args = ["--upstream-host", "platform", "--upstream-port", "19090", "--listen-port", "8443"]
    args += ["--descriptor-mount", "/config/api.binpb", "--out", str(custom)]
    assert envoy_gen.main(args) == 0
    config = yaml.safe_load(custom.read_text(encoding="utf-8"))
    _bootstrap(config)
    assert _transcoder_config(config)["proto_descriptor"] == "/config/api.binpb"
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    assert {_host(cluster) for cluster in clusters.values()} == {"platform"}
    assert _port(clusters[_grpc_cluster_name(config)]) == 19090
    assert envoy_gen.main(["--out", str(custom), "--check"]) == 1


def test_generator_refuses_bindings_shadowed_by_probe_routes(
    fds: descriptor_pb2.FileDescriptorSet,
) -> None:
    shadowing = envoy_gen.HttpBinding("campaignexpress.x.v1.X", "Get", "get", "/{name=*}")
    with pytest.raises(ValueError, match="collides"):
        envoy_gen._check_no_shadowed_bindings([shadowing])
    envoy_gen._check_no_shadowed_bindings(envoy_gen.http_bindings(fds))


# --------------------------------------------------------------------------
# (e) the descriptor set is what the transcoder needs


def test_descriptor_set_has_http_annotations(fds: descriptor_pb2.FileDescriptorSet) -> None:
    names = {file.name for file in fds.file}
    assert {"google/api/http.proto", "google/api/annotations.proto"} <= names
    # convert_grpc_status prints google.rpc.Status details; their types must be there.
    assert {"google/rpc/status.proto", "google/rpc/error_details.proto"} <= names
    missing = {dep for file in fds.file for dep in file.dependency} - names
    assert not missing, f"imports missing from the descriptor set: {missing}"
    own = [file for file in fds.file if file.package.startswith("campaignexpress.")]
    assert own and all(file.source_code_info.location for file in own)
    assert _descriptor_services(fds)
