"""REST/JSON -> gRPC transcoding from `google.api.http` rules.

Each rule becomes a Route: an HTTP verb and a regular expression compiled
from the path template, the request fields the template binds, and where the
body goes. A matched request is turned into the RPC's request message
(path variables, then body, then query parameters), sent through a channel
(in-process or remote) and the reply is rendered as JSON with protobuf's
JSON mapping (lowerCamelCase names), as Envoy's transcoder does."""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor, json_format, message, message_factory

from services.common.errors import FieldViolation, InvalidArgument, collect

_VARIABLE = re.compile(r"\{([a-zA-Z0-9_.]+)(?:=([^}]*))?\}")


@dataclass(frozen=True)
class Route:
    http_method: str
    template: str
    regex: re.Pattern[str]
    variables: tuple[tuple[str, str], ...]  # (regex group, field path)
    body: str  # "" (none), "*" (whole request) or a field name
    grpc_method: str  # "/pkg.Service/Method"
    service: str  # full service name
    method: descriptor.MethodDescriptor
    request_class: type[message.Message]
    response_class: type[message.Message]
    # A server stream of google.api.HttpBody: the response is a file, sent
    # chunk by chunk as the stream yields them.
    streaming: bool = False
    # The response field answered as the body ("": the whole response), as
    # google.api.http's `response_body`.
    response_body: str = ""

    @property
    def bound_fields(self) -> set[str]:
        return {path.split(".")[0] for _, path in self.variables}


def _segment_regex(pattern: str) -> str:
    parts = []
    for segment in pattern.split("/"):
        if segment == "**":
            parts.append(".+")
        elif segment == "*":
            parts.append("[^/]+")
        else:
            parts.append(re.escape(segment))
    return "/".join(parts)


def compile_template(template: str) -> tuple[re.Pattern[str], tuple[tuple[str, str], ...]]:
    """`/v1/{name=tenants/*/users/*}:revoke` -> regex and bound field paths."""
    verb = ""
    last_slash = template.rfind("/")
    colon = template.rfind(":")
    if colon > last_slash and "}" not in template[colon:]:
        template, verb = template[:colon], template[colon:]
    regex, variables, position = "", [], 0
    for index, match in enumerate(_VARIABLE.finditer(template)):
        regex += _segment_regex(template[position : match.start()])
        group = f"v{index}"
        regex += f"(?P<{group}>{_segment_regex(match.group(2) or '*')})"
        variables.append((group, match.group(1)))
        position = match.end()
    regex += _segment_regex(template[position:]) + re.escape(verb)
    return re.compile(f"^{regex}$"), tuple(variables)


def _rules(rule: http_pb2.HttpRule) -> Iterable[http_pb2.HttpRule]:
    yield rule
    yield from rule.additional_bindings


HTTP_BODY = "google.api.HttpBody"


def serves_over_rest(method: descriptor.MethodDescriptor) -> bool:
    """Unary methods, and server streams of HttpBody (files, streamed);
    other streams are gRPC only."""
    if method.client_streaming:
        return False
    return not method.server_streaming or method.output_type.full_name == HTTP_BODY


def routes_for(service: descriptor.ServiceDescriptor) -> list[Route]:
    routes = []
    for method in service.methods:
        if not serves_over_rest(method):
            continue
        options = method.GetOptions()
        if not options.HasExtension(annotations_pb2.http):
            continue
        for rule in _rules(options.Extensions[annotations_pb2.http]):
            kind = rule.WhichOneof("pattern")
            if kind is None:
                continue
            if kind == "custom":
                verb, template = rule.custom.kind.upper(), rule.custom.path
            else:
                verb, template = kind.upper(), getattr(rule, kind)
            regex, variables = compile_template(template)
            routes.append(
                Route(
                    http_method=verb,
                    template=template,
                    regex=regex,
                    variables=variables,
                    body=rule.body,
                    grpc_method=f"/{service.full_name}/{method.name}",
                    service=service.full_name,
                    method=method,
                    request_class=message_factory.GetMessageClass(method.input_type),
                    response_class=message_factory.GetMessageClass(method.output_type),
                    streaming=method.server_streaming,
                    response_body=rule.response_body,
                )
            )
    return routes


class Router:
    def __init__(self, routes: Iterable[Route]) -> None:
        self._by_verb: dict[str, list[Route]] = {}
        for route in routes:
            self._by_verb.setdefault(route.http_method, []).append(route)
        # Literal-rich templates first, so /v1/tenants beats /v1/{name=...}.
        for bucket in self._by_verb.values():
            bucket.sort(key=lambda r: (-len(_VARIABLE.sub("", r.template)), r.template))

    def match(self, verb: str, path: str) -> tuple[Route, dict[str, str]] | None:
        for route in self._by_verb.get(verb, ()):
            found = route.regex.match(path)
            if found:
                values = {field: found.group(group) for group, field in route.variables}
                return route, values
        return None

    def allowed_verbs(self, path: str) -> list[str]:
        return sorted(
            verb
            for verb, routes in self._by_verb.items()
            if any(r.regex.match(path) for r in routes)
        )

    @property
    def routes(self) -> list[Route]:
        return [r for bucket in self._by_verb.values() for r in bucket]


def _field_chain(root: descriptor.Descriptor, path: str) -> list[descriptor.FieldDescriptor] | None:
    """Resolve `a.b` (snake_case or lowerCamelCase parts) to field descriptors."""
    chain: list[descriptor.FieldDescriptor] = []
    current: descriptor.Descriptor | None = root
    for part in path.split("."):
        if current is None:
            return None
        field = current.fields_by_name.get(part) or current.fields_by_camelcase_name.get(part)
        if field is None:
            return None
        chain.append(field)
        current = field.message_type
    return chain


_WKT_AS_STRING = {
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
    "google.protobuf.FieldMask",
}


def _scalar(field: descriptor.FieldDescriptor, raw: str, name: str) -> Any:
    """A query or path string as the JSON value json_format expects."""
    t = field.type
    try:
        if t == field.TYPE_BOOL:
            lowered = raw.lower()
            if lowered not in ("true", "false", "1", "0"):
                raise ValueError
            return lowered in ("true", "1")
        if t in (field.TYPE_DOUBLE, field.TYPE_FLOAT):
            return float(raw)
        if field.cpp_type in (field.CPPTYPE_INT32, field.CPPTYPE_UINT32):
            return int(raw)
        if field.cpp_type in (field.CPPTYPE_INT64, field.CPPTYPE_UINT64):
            return str(int(raw))
        if t == field.TYPE_ENUM:
            return int(raw) if raw.lstrip("-").isdigit() else raw
        if t == field.TYPE_BYTES:
            base64.b64decode(raw, validate=True)
            return raw
        if t == field.TYPE_MESSAGE:
            kind = field.message_type.full_name if field.message_type else ""
            if kind in _WKT_AS_STRING or (
                kind.startswith("google.protobuf.") and kind.endswith("Value")
            ):
                return raw
            raise ValueError
    except ValueError:
        raise InvalidArgument.field(name, f"{raw!r} is not a valid {_type_name(field)}") from None
    return raw


def _type_name(field: descriptor.FieldDescriptor) -> str:
    if field.message_type is not None:
        return field.message_type.full_name
    if field.enum_type is not None:
        return f"{field.enum_type.full_name} name"
    return {
        field.TYPE_BOOL: "boolean",
        field.TYPE_DOUBLE: "number",
        field.TYPE_FLOAT: "number",
        field.TYPE_BYTES: "base64 string",
        field.TYPE_STRING: "string",
    }.get(field.type, "integer")


def _put(tree: dict[str, Any], chain: list[descriptor.FieldDescriptor], value: Any) -> None:
    node = tree
    for field in chain[:-1]:
        node = node.setdefault(field.json_name, {})
        if not isinstance(node, dict):
            raise InvalidArgument.field(field.name, "is set twice with different shapes")
    last = chain[-1]
    if last.is_repeated:
        node.setdefault(last.json_name, []).append(value)
    else:
        node[last.json_name] = value


def build_request(
    route: Route,
    path_values: Mapping[str, str],
    body: Any,
    query: Iterable[tuple[str, str]],
) -> message.Message:
    """The RPC request from path variables, JSON body and query parameters.
    Every problem is reported as INVALID_ARGUMENT naming the field."""
    request_type = route.method.input_type
    tree: dict[str, Any] = {}
    violations: list[FieldViolation] = []

    if route.body == "*":
        if not isinstance(body, dict):
            raise InvalidArgument.field("body", "must be a JSON object")
        tree.update(body)
    elif route.body:
        body_field = request_type.fields_by_name[route.body]
        if body is None and body_field.message_type is not None:
            body = {}
        tree[body_field.json_name] = body

    bound = {p for _, p in route.variables}
    if route.body != "*":
        for key, raw in query:
            chain = _field_chain(request_type, key)
            if chain is None or chain[0].name == route.body or key in bound:
                violations.append(FieldViolation(key, "unknown query parameter"))
                continue
            try:
                _put(tree, chain, _scalar(chain[-1], raw, key))
            except InvalidArgument as exc:
                violations.extend(exc.field_violations)
    elif any(True for _ in query):
        violations.append(FieldViolation("query", "this call takes its fields in the body"))
    collect(violations)

    for path, raw in path_values.items():
        chain = _field_chain(request_type, path)
        if chain is None:  # a rule naming a missing field is a contract bug
            raise InvalidArgument.field(path, "is not a field of the request")
        _put_override(tree, chain, _scalar(chain[-1], raw, path))

    request = route.request_class()
    structs: list[tuple[tuple[str | int, ...], dict[str, Any]]] = []
    if _holds_struct(request_type):
        tree = _without_structs(tree, request_type, (), structs)
    try:
        json_format.ParseDict(tree, request)
    except json_format.ParseError as exc:
        raise InvalidArgument(
            f"invalid request body: {exc}",
            reason="MALFORMED_BODY",
            field_violations=[FieldViolation(_field_of(str(exc)) or "body", str(exc))],
        ) from None
    for where, value in structs:
        _set_struct(request, where, value)
    return request


_STRUCT = "google.protobuf.Struct"


@functools.cache
def _holds_struct(message_type: descriptor.Descriptor, seen: frozenset[str] = frozenset()) -> bool:
    """Whether a message has a Struct field, itself or deeper."""
    for field in message_type.fields:
        inner = field.message_type
        if inner is None or inner.full_name in seen:
            continue
        if inner.full_name == _STRUCT or _holds_struct(inner, seen | {message_type.full_name}):
            return True
    return False


def _without_structs(
    tree: dict[str, Any],
    message_type: descriptor.Descriptor,
    path: tuple[str | int, ...],
    found: list[tuple[tuple[str | int, ...], dict[str, Any]]],
) -> dict[str, Any]:
    """The tree without the JSON objects that go into Struct fields (each
    noted in `found` with where it goes). Protobuf's JSON parser builds a
    Struct a Value at a time (~80 us for an order's dozen values);
    `Struct.update` afterwards costs a third. Anything unusual (a field
    named twice, in a oneof, a map, not an object) stays for the parser and
    its errors."""
    out = dict(tree)
    for key, value in tree.items():
        field = message_type.fields_by_camelcase_name.get(key) or message_type.fields_by_name.get(
            key
        )
        inner = field.message_type if field is not None else None
        if field is None or inner is None or field.containing_oneof is not None:
            continue
        if field.json_name in tree and field.name in tree and field.json_name != field.name:
            continue  # both spellings: the parser's error
        if inner.GetOptions().map_entry:
            continue
        if inner.full_name == _STRUCT:
            if isinstance(value, dict) and not field.is_repeated:
                found.append(((*path, field.name), value))
                del out[key]
        elif not _holds_struct(inner):
            continue
        elif field.is_repeated and isinstance(value, list):
            out[key] = [
                _without_structs(item, inner, (*path, field.name, n), found)
                if isinstance(item, dict)
                else item
                for n, item in enumerate(value)
            ]
        elif not field.is_repeated and isinstance(value, dict):
            out[key] = _without_structs(value, inner, (*path, field.name), found)
    return out


def _set_struct(
    request: message.Message, path: tuple[str | int, ...], value: dict[str, Any]
) -> None:
    node: Any = request
    for step in path:
        node = node[step] if isinstance(step, int) else getattr(node, step)
    node.SetInParent()  # present even when empty, as the parser makes it
    node.update(value)


def _put_override(
    tree: dict[str, Any], chain: list[descriptor.FieldDescriptor], value: Any
) -> None:
    """Path variables win over body values for the same field."""
    node = tree
    for field in chain[:-1]:
        child = node.get(field.json_name)
        if child is None:
            child = node.get(field.name)
        if not isinstance(child, dict):
            child = {}
        node.pop(field.name, None)
        node[field.json_name] = child
        node = child
    node.pop(chain[-1].name, None)
    node[chain[-1].json_name] = value


_PARSE_FIELD = re.compile(r'field "?([A-Za-z0-9_.]+)"?|at "?([A-Za-z0-9_.\[\]]+)"?')


def _field_of(error: str) -> str:
    """Best effort: the field json_format's message names."""
    found = _PARSE_FIELD.search(error)
    if not found:
        return ""
    # the message ends its path with the sentence's full stop (or an ellipsis)
    return (found.group(1) or found.group(2) or "").rstrip(".").split(".", 1)[-1]


def render(response: message.Message, response_body: str = "") -> dict[str, Any]:
    """A response as JSON: the whole message, or its `response_body` field."""
    if response_body:
        return json_format.MessageToDict(getattr(response, response_body))
    return json_format.MessageToDict(response)
