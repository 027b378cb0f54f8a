"""Generate the Envoy v3 static bootstrap of the Campaign Express edge proxy.

    python -m mesh.envoy [--descriptor gen/campaignexpress/descriptor_set.binpb]
                         [--upstream-host 127.0.0.1 --upstream-port 9090]
                         [--gateway-host HOST --gateway-port 8080]
                         [--listen-port 10000] [--descriptor-mount PATH]
                         [--out mesh/envoy/edge.yaml] [--check]

The edge is one listener (HTTP/1.1 and h2c) with an http_connection_manager
whose filters are the gRPC-JSON transcoder and the router:

* native gRPC calls (`/campaignexpress.<domain>.v1.<Service>/<Method>`) pass
  through the transcoder untouched and go to the platform's gRPC port;
* REST/JSON calls that match a `google.api.http` rule are transcoded to gRPC
  by Envoy and go to the same gRPC port; REST calls that match no rule are
  answered 404 by Envoy itself;
* `/health`, `/live`, `/ready` and `/openapi.json` go to the built-in HTTP
  gateway, which serves them; the transcoder is switched off on those routes.

The list of transcoded services is read from the descriptor set: every
service of every file whose package starts with `campaignexpress.`; nothing
here names a service. The output is deterministic (sorted keys, sorted
services), so the committed file can be checked for drift.

This module only builds dicts and writes YAML; it does not need Envoy or the
xds-protos package (tests/test_mesh.py loads the output into Envoy's own API
messages to check every field name).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import re
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import yaml
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

from gateway.transcoder import compile_template

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_DESCRIPTOR = ROOT / "gen" / "campaignexpress" / "descriptor_set.binpb"
DEFAULT_OUT = ROOT / "mesh" / "envoy" / "edge.yaml"
#: Where the descriptor set is mounted inside the Envoy container.
DEFAULT_DESCRIPTOR_MOUNT = "/etc/envoy/campaignexpress.binpb"

PACKAGE_PREFIX = "campaignexpress."

#: Plain HTTP endpoints of the built-in gateway (probes and its OpenAPI document):
#: routed to it, not transcoded. Every REST path of the API starts with /v1/.
# Served by the built-in gateway itself: the probes, the OpenAPI document,
# the OpenRTB JSON endpoint (OpenRTB JSON is not protobuf JSON, so the
# transcoder cannot carry it) and Segment's tracking paths (Basic write-key
# auth and Segment's bodies; gateway/tracking.py).
SEGMENT_PATHS = tuple(
    f"/v1/{kind}" for kind in ("identify", "track", "page", "screen", "group", "alias", "batch")
)
GATEWAY_PATHS = ("/health", "/live", "/openapi.json", "/ready", "/v1/bid", *SEGMENT_PATHS)

GRPC_CLUSTER = "campaignexpress_grpc"
GATEWAY_CLUSTER = "campaignexpress_gateway"

TRANSCODER_FILTER = "envoy.filters.http.grpc_json_transcoder"
ROUTER_FILTER = "envoy.filters.http.router"
HCM_FILTER = "envoy.filters.network.http_connection_manager"
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def _type_url(full_name: str) -> str:
    return f"type.googleapis.com/{full_name}"


Json = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class EdgeOptions:
    """Everything the edge bootstrap depends on besides the descriptor set."""

    descriptor_mount: str = DEFAULT_DESCRIPTOR_MOUNT
    upstream_host: str = "127.0.0.1"
    upstream_port: int = 9090
    gateway_host: str | None = None  # None: same host as the gRPC upstream
    gateway_port: int = 8080
    listen_address: str = "0.0.0.0"
    listen_port: int = 10000
    admin_address: str = "127.0.0.1"
    admin_port: int = 9901


@dataclasses.dataclass(frozen=True, order=True)
class HttpBinding:
    """One `google.api.http` binding (the main rule or an additional one)."""

    service: str  # full name, e.g. campaignexpress.auth.v1.AuthService
    method: str  # e.g. Login
    verb: str  # get, post, ..., or a custom verb
    path: str  # the path template, e.g. /v1/{name=tenants/*}

    @property
    def grpc_path(self) -> str:
        return f"/{self.service}/{self.method}"


# --------------------------------------------------------------------------
# Descriptor set


def load_descriptor_set(path: pathlib.Path) -> descriptor_pb2.FileDescriptorSet:
    """Parse the buf-built descriptor set and check it is usable by Envoy."""
    fds = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())
    names = {f.name for f in fds.file}
    missing = sorted({dep for f in fds.file for dep in f.dependency} - names)
    if missing:
        raise ValueError(f"{path}: imports missing from the descriptor set: {missing}")
    # The transcoder reads the google.api.http options from the descriptor set.
    if "google/api/http.proto" not in names:
        raise ValueError(f"{path}: google/api/http.proto is missing; build it with imports")
    return fds


def _own_files(
    fds: descriptor_pb2.FileDescriptorSet,
) -> Iterator[descriptor_pb2.FileDescriptorProto]:
    for file in fds.file:
        if file.package.startswith(PACKAGE_PREFIX):
            yield file


def services(fds: descriptor_pb2.FileDescriptorSet) -> list[str]:
    """Full names of every service in a `campaignexpress.*` package, sorted."""
    return sorted(
        f"{file.package}.{service.name}" for file in _own_files(fds) for service in file.service
    )


def http_bindings(fds: descriptor_pb2.FileDescriptorSet) -> list[HttpBinding]:
    """Every `google.api.http` binding of the `campaignexpress.*` services, sorted."""
    bindings: list[HttpBinding] = []
    for file in _own_files(fds):
        for service in file.service:
            full_name = f"{file.package}.{service.name}"
            for method in service.method:
                if not method.options.HasExtension(annotations_pb2.http):
                    continue
                rule = method.options.Extensions[annotations_pb2.http]
                for binding in [rule, *rule.additional_bindings]:
                    pattern = binding.WhichOneof("pattern")
                    if pattern is None:
                        continue
                    if pattern == "custom":
                        verb, template = binding.custom.kind.lower(), binding.custom.path
                    else:
                        verb, template = pattern, getattr(binding, pattern)
                    bindings.append(HttpBinding(full_name, method.name, verb, template))
    return sorted(bindings)


def template_regex(template: str) -> re.Pattern[str]:
    """A regex for the request paths a google.api.http path template matches
    (the gateway's own template compiler, so both edges agree)."""
    return compile_template(template)[0]


def _check_no_shadowed_bindings(bindings: Sequence[HttpBinding]) -> None:
    """The probe routes come first; a REST binding on one of them would be unreachable."""
    for binding in bindings:
        regex = template_regex(binding.path)
        for path in GATEWAY_PATHS:
            if regex.fullmatch(path):
                raise ValueError(
                    f"{binding.service}.{binding.method}: {binding.verb.upper()} "
                    f"{binding.path} collides with the gateway route {path}"
                )


# --------------------------------------------------------------------------
# Bootstrap


def _socket_address(host: str, port: int) -> Json:
    return {"socket_address": {"address": host, "port_value": port}}


def _cluster(name: str, host: str, port: int) -> Json:
    return {
        "name": name,
        # STRICT_DNS works for both IP literals (127.0.0.1) and names
        # (a compose service or a Kubernetes Service), re-resolving the name.
        "type": "STRICT_DNS",
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": "2s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": _socket_address(host, port)}}]}
            ],
        },
    }


def _grpc_cluster(options: EdgeOptions) -> Json:
    cluster = _cluster(GRPC_CLUSTER, options.upstream_host, options.upstream_port)
    cluster["typed_extension_protocol_options"] = {
        HTTP_PROTOCOL_OPTIONS: {
            "@type": _type_url(HTTP_PROTOCOL_OPTIONS),
            "common_http_protocol_options": {"idle_timeout": "300s"},
            # gRPC needs HTTP/2 to the upstream (plaintext, prior knowledge).
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }
    cluster["health_checks"] = [
        {
            "timeout": "1s",
            "interval": "5s",
            "no_traffic_interval": "5s",
            "unhealthy_threshold": 3,
            "healthy_threshold": 1,
            # grpc.health.v1.Health/Check with service "" (the whole server),
            # which the platform's health servicer reports.
            "grpc_health_check": {},
        }
    ]
    return cluster


def _transcoder(services_: Sequence[str], options: EdgeOptions) -> Json:
    return {
        "@type": _type_url(
            "envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder"
        ),
        # A file path (mounted into the container), not proto_descriptor_bin:
        # the config stays small and readable and the descriptor set is the
        # one `scripts/gen.py` builds, byte for byte.
        "proto_descriptor": options.descriptor_mount,
        "services": list(services_),
        "print_options": {
            "add_whitespace": False,
            # Omit fields with default values and print enums by name, like
            # google.protobuf.json_format does in the built-in gateway.
            "always_print_primitive_fields": False,
            "always_print_enums_as_ints": False,
            # lowerCamelCase JSON names, the proto3 JSON mapping; the built-in
            # gateway uses the same names, so clients can use either.
            "preserve_proto_field_names": False,
        },
        # Turn grpc-status/grpc-message (and details) into an HTTP status and
        # a google.rpc.Status JSON body, instead of a 200 with trailers that
        # HTTP/1.1 clients never see.
        "convert_grpc_status": True,
        # Only methods with a google.api.http rule get a REST binding: the
        # REST surface is the one the protos declare, nothing implicit.
        "auto_mapping": False,
        # Re-match the route on the transcoded gRPC path (/pkg.Service/Method),
        # so REST and native gRPC calls take the same route and cluster.
        "match_incoming_request_route": False,
        # A query parameter that maps to no request field is an error (400)
        # rather than silently dropped, so typos in filters do not pass.
        "ignore_unknown_query_parameters": False,
        # `+` in a query string means a space, as in HTML forms and in the
        # built-in gateway's query parsing.
        "query_param_unescape_plus": True,
        "request_validation_options": {
            # A non-gRPC request that matches no binding gets 404 from Envoy,
            # instead of being forwarded as HTTP/1.1 to the gRPC port.
            "reject_unknown_method": True,
            "reject_unknown_query_parameters": True,
        },
    }


def _routes() -> list[Json]:
    disable_transcoder = {
        TRANSCODER_FILTER: {
            "@type": _type_url("envoy.config.route.v3.FilterConfig"),
            "disabled": True,
        }
    }
    routes: list[Json] = [
        {
            "name": "gateway_" + re.sub(r"\W", "_", path.strip("/")),
            "match": {"path": path},
            "route": {"cluster": GATEWAY_CLUSTER, "timeout": "5s"},
            # The transcoder would answer 404 (reject_unknown_method): these
            # are plain HTTP endpoints of the gateway, not gRPC methods.
            "typed_per_filter_config": disable_transcoder,
        }
        for path in GATEWAY_PATHS
    ]
    routes.append(
        {
            # Native gRPC (/campaignexpress.*/...) and transcoded REST calls;
            # REST calls are re-matched here on their gRPC path. It also lets
            # through grpc.health.v1.Health and server reflection, which the
            # platform serves on the same port; narrow the prefix to
            # "/campaignexpress." to hide them from the edge.
            "name": "grpc",
            "match": {"prefix": "/"},
            "route": {
                "cluster": GRPC_CLUSTER,
                "timeout": "30s",
                # Honour a client's grpc-timeout, up to the route timeout.
                "max_stream_duration": {"grpc_timeout_header_max": "30s"},
                # Only failures where the upstream never saw the request, so
                # mutating calls are never repeated.
                "retry_policy": {"retry_on": "connect-failure,refused-stream", "num_retries": 2},
            },
        }
    )
    return routes


def _http_connection_manager(services_: Sequence[str], options: EdgeOptions) -> Json:
    return {
        "@type": _type_url(
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
        ),
        "stat_prefix": "edge",
        # HTTP/1.1 for REST clients, h2c for gRPC clients.
        "codec_type": "AUTO",
        # Edge hardening from Envoy's "configuring Envoy as an edge proxy".
        "use_remote_address": True,
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT",
        "request_headers_timeout": "10s",
        "stream_idle_timeout": "300s",
        "common_http_protocol_options": {"idle_timeout": "3600s"},
        "http2_protocol_options": {
            "max_concurrent_streams": 100,
            "initial_stream_window_size": 65536,
            "initial_connection_window_size": 1048576,
        },
        "access_log": [
            {
                "name": "envoy.access_loggers.stdout",
                "typed_config": {
                    "@type": _type_url("envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"),
                },
            }
        ],
        "route_config": {
            "name": "edge",
            "virtual_hosts": [{"name": "campaignexpress", "domains": ["*"], "routes": _routes()}],
        },
        "http_filters": [
            {"name": TRANSCODER_FILTER, "typed_config": _transcoder(services_, options)},
            {
                "name": ROUTER_FILTER,
                "typed_config": {
                    "@type": _type_url("envoy.extensions.filters.http.router.v3.Router")
                },
            },
        ],
    }


def edge_bootstrap(fds: descriptor_pb2.FileDescriptorSet, options: EdgeOptions) -> Json:
    """The edge proxy's Envoy bootstrap (envoy.config.bootstrap.v3.Bootstrap) as a dict."""
    services_ = services(fds)
    if not services_:
        raise ValueError(f"no service in a {PACKAGE_PREFIX}* package in the descriptor set")
    _check_no_shadowed_bindings(http_bindings(fds))
    gateway_host = options.gateway_host or options.upstream_host
    return {
        "node": {"id": "campaignexpress-edge", "cluster": "campaignexpress-edge"},
        "admin": {"address": _socket_address(options.admin_address, options.admin_port)},
        "static_resources": {
            "listeners": [
                {
                    "name": "edge",
                    "address": _socket_address(options.listen_address, options.listen_port),
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": HCM_FILTER,
                                    "typed_config": _http_connection_manager(services_, options),
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                _grpc_cluster(options),
                _cluster(GATEWAY_CLUSTER, gateway_host, options.gateway_port),
            ],
        },
        # Envoy warns at start-up without a bound on downstream connections.
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": _type_url(
                            "envoy.extensions.resource_monitors.downstream_connections.v3."
                            "DownstreamConnectionsConfig"
                        ),
                        "max_active_downstream_connections": 50000,
                    },
                }
            ]
        },
    }


HEADER = """\
# Envoy v3 bootstrap of the Campaign Express edge proxy.
# GENERATED by `python -m mesh.envoy` from gen/campaignexpress/descriptor_set.binpb: do not edit.
# Regenerate after changing protos (scripts/gen.py) or mesh/envoy.py; see mesh/README.md.
"""


def render(config: Json) -> str:
    """Deterministic YAML: sorted keys, block style, no line wrapping."""
    # The JSON round trip unshares sub-dicts (no `&id001` anchors in the output)
    # and proves the config is plain JSON, as proto3 JSON parsing expects.
    plain = json.loads(json.dumps(config))
    body = yaml.safe_dump(plain, sort_keys=True, default_flow_style=False, width=4096)
    return HEADER + str(body)


def generate(
    descriptor: pathlib.Path = DEFAULT_DESCRIPTOR, options: EdgeOptions | None = None
) -> str:
    """The edge.yaml text for a descriptor set file."""
    return render(edge_bootstrap(load_descriptor_set(descriptor), options or EdgeOptions()))


def main(argv: Sequence[str] | None = None) -> int:
    defaults = EdgeOptions()
    parser = argparse.ArgumentParser(
        prog="python -m mesh.envoy", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--descriptor", type=pathlib.Path, default=DEFAULT_DESCRIPTOR)
    parser.add_argument(
        "--descriptor-mount",
        default=defaults.descriptor_mount,
        help="path of the descriptor set inside the Envoy container",
    )
    parser.add_argument("--upstream-host", default=defaults.upstream_host)
    parser.add_argument("--upstream-port", type=int, default=defaults.upstream_port)
    parser.add_argument("--gateway-host", default=None, help="default: --upstream-host")
    parser.add_argument("--gateway-port", type=int, default=defaults.gateway_port)
    parser.add_argument("--listen-address", default=defaults.listen_address)
    parser.add_argument("--listen-port", type=int, default=defaults.listen_port)
    parser.add_argument("--admin-port", type=int, default=defaults.admin_port)
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT, help="'-' for stdout")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if --out differs instead of writing it"
    )
    args = parser.parse_args(argv)
    options = EdgeOptions(
        descriptor_mount=args.descriptor_mount,
        upstream_host=args.upstream_host,
        upstream_port=args.upstream_port,
        gateway_host=args.gateway_host,
        gateway_port=args.gateway_port,
        listen_address=args.listen_address,
        listen_port=args.listen_port,
        admin_port=args.admin_port,
    )
    text = generate(args.descriptor, options)
    out: pathlib.Path = args.out
    if str(out) == "-":
        sys.stdout.write(text)
        return 0
    if args.check:
        if not out.is_file() or out.read_text(encoding="utf-8") != text:
            print(f"{out} is out of date; run `python -m mesh.envoy`", file=sys.stderr)
            return 1
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
