"""OpenAPI 3.1 document of the REST gateway, derived from the proto descriptors.

Everything comes from a ``FileDescriptorSet`` built by buf with source info
(``gen/campaignexpress/descriptor_set.binpb``, written by ``scripts/gen.py``): one operation per
``google.api.http`` rule (additional bindings included), schemas for every
reachable message and enum, comments as descriptions, and security from the
``(campaignexpress.type.v1.access)`` method option.

Path templates. OpenAPI path parameters cannot contain ``/``, so a variable
bound to a multi-segment pattern is expanded AIP style: every ``*`` (or ``**``)
of the pattern becomes its own parameter, named after the singular of the
literal segment before it, and the literals stay in the path::

    /v1/{name=tenants/*/users/*}          -> /v1/tenants/{tenant}/users/{user}
    /v1/{parent=tenants/*}/apiKeys        -> /v1/tenants/{tenant}/apiKeys
    /v1/{name=tenants/*/apiKeys/*}:revoke -> /v1/tenants/{tenant}/apiKeys/{apiKey}:revoke

The gateway rebuilds the field from the same segments (``name`` =
``tenants/{tenant}/users/{user}``); each operation lists these rebuilds in
``x-path-bindings``. A variable without a pattern, or with the pattern ``*``,
stays one parameter named after its field path (``{user.name}``). A ``*`` with no
literal before it inside the pattern is named after the field; ``**`` matches
several segments and says so in its description. Custom verbs are kept.
"""

from __future__ import annotations

import copy
import os
import pathlib
import re
import textwrap
from collections.abc import Sequence
from typing import Any

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2
from google.rpc import code_pb2

from campaignexpress.type.v1 import access_pb2

#: Server streams of this message are files over REST (streamed chunks).
HTTP_BODY = "google.api.HttpBody"

__all__ = ["build_openapi", "default_descriptor_set_path", "load_descriptor_set"]

Schema = dict[str, Any]
FDP = descriptor_pb2.FieldDescriptorProto
_REF = "#/components/schemas/"
_OPENAPI_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
_I32: Schema = {"type": "integer", "format": "int32"}
_U32: Schema = {"type": "integer", "format": "uint32", "minimum": 0}
_INT64: Schema = {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"}
_UINT64: Schema = {"type": "string", "format": "int64", "pattern": "^[0-9]+$"}
_DOUBLE: Schema = {"type": "number", "format": "double"}
_FLOAT: Schema = {"type": "number", "format": "float"}
_BOOL: Schema = {"type": "boolean"}
_STRING: Schema = {"type": "string"}
_BYTES: Schema = {"type": "string", "format": "byte", "contentEncoding": "base64"}
_SCALARS: dict[int, Schema] = {
    **dict.fromkeys((FDP.TYPE_INT32, FDP.TYPE_SINT32, FDP.TYPE_SFIXED32), _I32),
    **dict.fromkeys((FDP.TYPE_UINT32, FDP.TYPE_FIXED32), _U32),
    **dict.fromkeys((FDP.TYPE_INT64, FDP.TYPE_SINT64, FDP.TYPE_SFIXED64), _INT64),
    **dict.fromkeys((FDP.TYPE_UINT64, FDP.TYPE_FIXED64), _UINT64),
    FDP.TYPE_DOUBLE: _DOUBLE,
    FDP.TYPE_FLOAT: _FLOAT,
    FDP.TYPE_BOOL: _BOOL,
    FDP.TYPE_STRING: _STRING,
    FDP.TYPE_BYTES: _BYTES,
}
_WRAPPERS = {"Double": _DOUBLE, "Float": _FLOAT, "Int64": _INT64, "UInt64": _UINT64}
_WRAPPERS |= {"Int32": _I32, "UInt32": _U32, "Bool": _BOOL, "String": _STRING, "Bytes": _BYTES}
# Well-known types with a JSON form of their own, inlined wherever they are
# used; those of _WKT_SCALAR also work as a single query parameter.
_WKT_SCALAR: dict[str, Schema] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {
        "type": "string",
        "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$",
        "description": "Seconds with an `s` suffix, e.g. `1.5s`.",
    },
    "google.protobuf.FieldMask": {
        "type": "string",
        "description": "Comma-separated field paths in lowerCamelCase, e.g. `displayName,labels`.",
    },
    **{f"google.protobuf.{name}Value": schema for name, schema in _WRAPPERS.items()},
}
_WKT_OTHER: dict[str, Schema] = {
    "google.protobuf.Empty": {"type": "object", "description": "Empty object `{}`."},
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {"description": "Any JSON value."},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "required": ["@type"],
        "additionalProperties": True,
    },
}


def default_descriptor_set_path() -> pathlib.Path:
    """``descriptor_set.binpb`` inside the generated ``campaignexpress`` package
    (package data, so it ships in wheels as well as in a checkout)."""
    import campaignexpress

    locations = list(getattr(campaignexpress, "__path__", []))
    if not locations:
        raise FileNotFoundError("cannot locate the campaignexpress package")
    return pathlib.Path(locations[0]) / "descriptor_set.binpb"


def load_descriptor_set(
    path: str | os.PathLike[str] | None = None,
) -> descriptor_pb2.FileDescriptorSet:
    """Read a serialized ``FileDescriptorSet``; ``None`` means the default path."""
    target = pathlib.Path(path) if path is not None else default_descriptor_set_path()
    if not target.is_file():
        raise FileNotFoundError(f"descriptor set not found at {target}; run scripts/gen.py")
    return descriptor_pb2.FileDescriptorSet.FromString(target.read_bytes())


def _clean(comment: str) -> str:
    return textwrap.dedent(comment).strip()


def _summary(text: str) -> str:
    """First sentence of the first paragraph, on one line."""
    first = " ".join(text.split("\n\n", 1)[0].split())
    return re.split(r"(?<=\.)\s", first, maxsplit=1)[0]


def _json_name(field: descriptor_pb2.FieldDescriptorProto) -> str:
    if field.json_name:
        return field.json_name
    head, *rest = field.name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _singular(word: str) -> str:
    if word.endswith("ies") and len(word) > 3:
        return word[:-3] + "y"
    if word.endswith("lves"):
        return word[:-3] + "f"
    if word.endswith(("sses", "xes", "ches", "shes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


class _Index:
    """Messages, enums, services and comments of a descriptor set, by full name."""

    def __init__(self, fds: descriptor_pb2.FileDescriptorSet) -> None:
        self.messages: dict[str, descriptor_pb2.DescriptorProto] = {}
        self.enums: dict[str, descriptor_pb2.EnumDescriptorProto] = {}
        self.services: dict[str, descriptor_pb2.ServiceDescriptorProto] = {}
        self.comments: dict[str, str] = {}
        for file in fds.file:
            self._locations = {tuple(loc.path): loc for loc in file.source_code_info.location}
            prefix = f"{file.package}." if file.package else ""
            for i, message in enumerate(file.message_type):
                self._message(prefix + message.name, message, (4, i))
            for i, enum in enumerate(file.enum_type):
                self._enum(prefix + enum.name, enum, (5, i))
            for i, service in enumerate(file.service):
                name = prefix + service.name
                self.services[name] = service
                self._comment(name, (6, i))
                for j, method in enumerate(service.method):
                    self._comment(f"{name}.{method.name}", (6, i, 2, j))

    def _comment(self, key: str, path: tuple[int, ...]) -> None:
        loc = self._locations.get(path)
        text = _clean(loc.leading_comments or loc.trailing_comments) if loc else ""
        if text:
            self.comments[key] = text

    def _message(
        self, name: str, message: descriptor_pb2.DescriptorProto, path: tuple[int, ...]
    ) -> None:
        self.messages[name] = message
        self._comment(name, path)
        for i, field in enumerate(message.field):
            self._comment(f"{name}.{field.name}", (*path, 2, i))
        for i, nested in enumerate(message.nested_type):
            self._message(f"{name}.{nested.name}", nested, (*path, 3, i))
        for i, enum in enumerate(message.enum_type):
            self._enum(f"{name}.{enum.name}", enum, (*path, 4, i))

    def _enum(
        self, name: str, enum: descriptor_pb2.EnumDescriptorProto, path: tuple[int, ...]
    ) -> None:
        self.enums[name] = enum
        self._comment(name, path)
        for i, value in enumerate(enum.value):
            self._comment(f"{name}.{value.name}", (*path, 2, i))

    def field(self, message: str, field_path: str) -> descriptor_pb2.FieldDescriptorProto:
        """The field at a dotted proto path (``user.name``) of a message."""
        return self.owner_and_field(message, field_path)[1]

    def field_comment(self, message: str, field_path: str) -> str | None:
        """The comment of the field at a dotted proto path, if any."""
        owner, field = self.owner_and_field(message, field_path)
        return self.comments.get(f"{owner}.{field.name}")

    def owner_and_field(
        self, message: str, field_path: str
    ) -> tuple[str, descriptor_pb2.FieldDescriptorProto]:
        """The message that declares the field at `field_path`, and the field."""
        current = message
        parts = field_path.split(".")
        for i, part in enumerate(parts):
            fields = self.messages[current].field if current in self.messages else []
            match = [f for f in fields if f.name == part]
            if not match:
                raise ValueError(f"{current} has no field {part!r} (path {field_path!r})")
            if i == len(parts) - 1:
                return current, match[0]
            current = match[0].type_name.lstrip(".")
        raise ValueError(f"empty field path in {message}")


class _Builder:
    """Builds component schemas on demand, following references."""

    def __init__(self, index: _Index) -> None:
        self.index = index
        self.schemas: dict[str, Schema] = {}
        self._pending: list[str] = []

    def ref(self, full_name: str) -> Schema:
        """Schema of a message or enum: inline for well-known types, else a $ref."""
        if full_name in _WKT_SCALAR:
            return copy.deepcopy(_WKT_SCALAR[full_name])
        if full_name in _WKT_OTHER:
            return copy.deepcopy(_WKT_OTHER[full_name])
        if full_name not in self.index.messages and full_name not in self.index.enums:
            raise ValueError(f"type {full_name} is not in the descriptor set")
        if full_name not in self.schemas:
            self.schemas[full_name] = {}
            self._pending.append(full_name)
        return {"$ref": _REF + full_name}

    def finish(self) -> dict[str, Schema]:
        """Builds every queued schema (and what they reach); returns them sorted."""
        while self._pending:
            name = self._pending.pop()
            if name in self.index.enums:
                self.schemas[name] = self._enum_schema(name)
            else:
                self.schemas[name] = self.message_schema(name)
        return dict(sorted(self.schemas.items()))

    def map_entry(
        self, field: descriptor_pb2.FieldDescriptorProto
    ) -> descriptor_pb2.DescriptorProto | None:
        """The synthetic entry message of a map field, or None."""
        if field.label != FDP.LABEL_REPEATED or field.type != FDP.TYPE_MESSAGE:
            return None
        entry = self.index.messages.get(field.type_name.lstrip("."))
        return entry if entry is not None and entry.options.map_entry else None

    def value_schema(self, field: descriptor_pb2.FieldDescriptorProto) -> Schema:
        """Schema of one value of the field, ignoring `repeated`."""
        if field.type in (FDP.TYPE_MESSAGE, FDP.TYPE_GROUP, FDP.TYPE_ENUM):
            return self.ref(field.type_name.lstrip("."))
        return copy.deepcopy(_SCALARS[field.type])

    def field_schema(self, field: descriptor_pb2.FieldDescriptorProto) -> Schema:
        """Schema of a field as it appears in JSON: arrays, maps and values."""
        entry = self.map_entry(field)
        if entry is not None:
            key, value = entry.field[0], entry.field[1]
            schema: Schema = {"type": "object", "additionalProperties": self.value_schema(value)}
            if key.type == FDP.TYPE_BOOL:
                schema["propertyNames"] = {"enum": ["true", "false"]}
            elif key.type != FDP.TYPE_STRING:
                schema["propertyNames"] = {"pattern": "^-?[0-9]+$"}
            return schema
        if field.label == FDP.LABEL_REPEATED:
            return {"type": "array", "items": self.value_schema(field)}
        return self.value_schema(field)

    def described(self, schema: Schema, description: str | None) -> Schema:
        """Adds a description to a schema, keeping any the schema already has."""
        if description:
            own = schema.get("description")
            schema["description"] = f"{description}\n\n{own}" if own else description
        return schema

    def message_schema(self, name: str, skip: frozenset[str] = frozenset()) -> Schema:
        """Object schema of a message, leaving out the top-level fields in `skip`."""
        message = self.index.messages[name]
        real_oneofs = {
            f.oneof_index
            for f in message.field
            if f.HasField("oneof_index") and not f.proto3_optional
        }
        members: dict[int, list[str]] = {i: [] for i in sorted(real_oneofs)}
        properties: dict[str, Schema] = {}
        for field in message.field:
            if field.name in skip:
                continue
            description = self.index.comments.get(f"{name}.{field.name}", "")
            if field.HasField("oneof_index") and field.oneof_index in members:
                members[field.oneof_index].append(_json_name(field))
                oneof = message.oneof_decl[field.oneof_index].name
                description = f"{description}\n\nPart of oneof `{oneof}`.".strip()
            schema = self.described(self.field_schema(field), description)
            if field.options.deprecated:
                schema["deprecated"] = True
            properties[_json_name(field)] = schema
        notes = [self.index.comments.get(name, "")]
        for index, fields in members.items():
            if fields:
                listed = ", ".join(f"`{f}`" for f in fields)
                oneof = message.oneof_decl[index].name
                notes.append(f"At most one of {listed} is set (oneof `{oneof}`).")
        result: Schema = {"type": "object", "properties": properties}
        return self.described(result, "\n\n".join(n for n in notes if n))

    def _enum_schema(self, name: str) -> Schema:
        values = list(dict.fromkeys(v.name for v in self.index.enums[name].value))
        lines = [self.index.comments.get(name, "")]
        for value in values:
            note = self.index.comments.get(f"{name}.{value}", "")
            lines.append(f"- `{value}`: {' '.join(note.split())}" if note else f"- `{value}`")
        return {"type": "string", "enum": values, "description": "\n".join(lines).strip()}


def _split_top(text: str, sep: str) -> list[str]:
    """Splits on `sep` outside braces."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if char == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _expand_template(
    template: str,
) -> tuple[str, list[tuple[str, str | None, bool]], dict[str, str]]:
    """Turns an http rule path into an OpenAPI path.

    Returns the path, its parameters in order as (name, field path when the
    parameter is the whole field else None, multi-segment), and the bindings
    field path -> how the gateway rebuilds it from the parameters.
    """
    if not template.startswith("/"):
        raise ValueError(f"path template {template!r} must start with '/'")
    segments = _split_top(template[1:], "/")
    verb_parts = _split_top(segments[-1], ":")
    segments[-1] = verb_parts[0]
    verb = ":" + ":".join(verb_parts[1:]) if len(verb_parts) > 1 else ""
    out: list[str] = []
    params: list[tuple[str, str | None, bool]] = []
    bindings: dict[str, str] = {}
    used: set[str] = set()

    def unique(base: str) -> str:
        name, n = base, 2
        while name in used:
            name, n = f"{base}_{n}", n + 1
        used.add(name)
        return name

    for segment in segments:
        if not (segment.startswith("{") and segment.endswith("}")):
            if segment in ("*", "**"):
                name = unique("wildcard")
                params.append((name, None, segment == "**"))
                segment = "{" + name + "}"
            out.append(segment)
            continue
        field_path, _, pattern = segment[1:-1].partition("=")
        if pattern in ("", "*"):
            name = unique(field_path)
            params.append((name, field_path, False))
            out.append("{" + name + "}")
            continue
        rebuilt: list[str] = []
        previous = ""
        for part in pattern.split("/"):
            if part in ("*", "**"):
                name = unique(_singular(previous) if previous else field_path.split(".")[-1])
                params.append((name, None, part == "**"))
                part = "{" + name + "}"
            else:
                previous = part
            rebuilt.append(part)
        bindings[field_path] = "/".join(rebuilt)
        out.extend(rebuilt)
    return "/" + "/".join(out) + verb, params, bindings


def _access(
    method: descriptor_pb2.MethodDescriptorProto,
) -> tuple[access_pb2.AccessRule, list[http_pb2.HttpRule]]:
    """The access rule and http rules (primary first, then additional bindings).

    The options are re-parsed from bytes so the extensions resolve even when
    the descriptor set was parsed before their modules were imported.
    """
    options = descriptor_pb2.MethodOptions.FromString(method.options.SerializeToString())
    access = access_pb2.AccessRule()
    if options.HasExtension(access_pb2.access):
        access.CopyFrom(options.Extensions[access_pb2.access])
    rules: list[http_pb2.HttpRule] = []
    if options.HasExtension(annotations_pb2.http):
        primary: http_pb2.HttpRule = options.Extensions[annotations_pb2.http]
        rules.append(primary)
        rules.extend(primary.additional_bindings)
    return access, rules


def _shared_components() -> tuple[dict[str, Schema], dict[str, Schema]]:
    """The Error and HealthStatus schemas, and the standard error responses."""
    fields = {
        "code": ("integer", "HTTP status code."),
        "status": ("string", "gRPC status code name."),
        "message": ("string", "Developer-facing message."),
        "reason": ("string", "Machine-readable cause, UPPER_SNAKE_CASE."),
        "domain": ("string", "Domain of the reason."),
        "requestId": ("string", "Id of the request, for support."),
    }
    error: dict[str, Schema] = {
        name: {"type": kind, "description": text} for name, (kind, text) in fields.items()
    }
    error["status"]["enum"] = sorted(code_pb2.Code.keys())
    error["metadata"] = {"type": "object", "additionalProperties": {"type": "string"}}
    violation = {"field": {"type": "string"}, "description": {"type": "string"}}
    error["fieldViolations"] = {
        "type": "array",
        "items": {"type": "object", "properties": violation},
    }
    envelope = {"type": "object", "required": ["code", "status", "message"], "properties": error}
    schemas: dict[str, Schema] = {
        "Error": {
            "type": "object",
            "description": "Error envelope returned by the gateway for every failed call.",
            "required": ["error"],
            "properties": {"error": envelope},
        },
        "HealthStatus": {
            "type": "object",
            "required": ["status"],
            "properties": {
                "status": {"type": "string", "examples": ["ok", "alive", "ready", "not ready"]},
                "checks": {"type": "object", "additionalProperties": {"type": "boolean"}},
                "problems": {
                    "type": "object",
                    "description": "Backends not ready: `down`, or `no answer within N s`.",
                    "additionalProperties": {"type": "string"},
                },
            },
        },
    }
    body = {"application/json": {"schema": {"$ref": _REF + "Error"}}}
    responses: dict[str, Schema] = {
        name: {"description": text, "content": body}
        for name, text in {
            "BadRequest": "Invalid request (INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE).",
            "Unauthenticated": "Credentials are missing, invalid or expired (UNAUTHENTICATED).",
            "PermissionDenied": "The caller lacks the required permission (PERMISSION_DENIED).",
            "NotFound": "The resource does not exist (NOT_FOUND).",
            "Conflict": "Already exists or changed meanwhile (ALREADY_EXISTS, ABORTED).",
            "TooManyRequests": "Rate limited (RESOURCE_EXHAUSTED); retry after the delay.",
            "Error": "Any other error.",
        }.items()
    }
    retry = {"description": "Seconds to wait.", "schema": {"type": "integer", "minimum": 0}}
    responses["TooManyRequests"]["headers"] = {"Retry-After": retry}
    return schemas, responses


def _platform_paths() -> dict[str, Schema]:
    """The plain HTTP endpoints served beside the transcoded RPCs."""
    health = {"application/json": {"schema": {"$ref": _REF + "HealthStatus"}}}
    document = {"application/json": {"schema": {"type": "object"}}}
    paths: dict[str, Schema] = {}
    for path, name, summary, responses in (
        ("/health", "Health", "Health of the process and its backends.", ("200", "503")),
        ("/ready", "Ready", "Readiness: the instance can take traffic.", ("200", "503")),
        ("/live", "Live", "Liveness: the process is running.", ("200", "503")),
        ("/openapi.json", "OpenApi", "This OpenAPI 3.1 document.", ("200",)),
    ):
        content = document if name == "OpenApi" else health
        texts = {"200": "OK", "503": "Not healthy or not ready."}
        operation: Schema = {"operationId": f"Platform_{name}", "tags": ["Platform"]}
        operation["summary"] = summary
        operation["security"] = []
        operation["responses"] = {
            c: {"description": texts[c], "content": content} for c in responses
        }
        paths[path] = {"get": operation}
    return paths


BIDDING_SERVICE = "campaignexpress.bidding.v1.BiddingService"
OPENRTB_BID_PATH = "/v1/bid"


def _openrtb_bid_path() -> dict[str, Schema]:
    """`POST /v1/bid`: OpenRTB 2.6 JSON in and out through the gateway's own
    adapter (not protobuf's JSON mapping), dispatched to ProcessBid."""
    object_ = {"type": "object"}
    bid_request: Schema = {
        "type": "object",
        "description": "An OpenRTB 2.6 BidRequest (IAB Tech Lab spec, section 3.2.1).",
        "required": ["id", "imp"],
        "properties": {
            "id": {"type": "string", "minLength": 1},
            "imp": {"type": "array", "minItems": 1, "items": object_},
            "site": object_,
            "app": object_,
            "device": object_,
            "user": object_,
            "regs": object_,
            "source": object_,
            "tmax": {"type": "integer", "minimum": 0},
            "cur": {"type": "array", "items": {"type": "string"}},
            "test": {"type": "integer", "enum": [0, 1]},
            "at": {"type": "integer"},
            "bcat": {"type": "array", "items": {"type": "string"}},
            "badv": {"type": "array", "items": {"type": "string"}},
        },
    }
    bid_response: Schema = {
        "type": "object",
        "description": "An OpenRTB 2.6 BidResponse (section 4.2.1).",
        "required": ["id"],
        "properties": {
            "id": {"type": "string"},
            "seatbid": {"type": "array", "items": object_},
            "bidid": {"type": "string"},
            "cur": {"type": "string"},
        },
    }
    operation: Schema = {
        "operationId": "OpenRtb_Bid",
        "tags": ["OpenRTB"],
        "summary": "Answers one OpenRTB 2.6 bid request (JSON).",
        "description": (
            "OpenRTB 2.6 JSON in and out. A no-bid is HTTP 204 with the reason in "
            "`X-No-Bid-Reason`. The body may be gzip-, deflate- or zstd-compressed "
            "(`Content-Encoding`). Any API key or token of the tenant (Viewer is enough) "
            "authenticates the exchange."
        ),
        "security": [{"bearerAuth": []}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": bid_request}}},
        "responses": {
            "200": {
                "description": "A bid.",
                "headers": {"x-openrtb-version": {"schema": {"type": "string"}}},
                "content": {"application/json": {"schema": bid_response}},
            },
            "204": {
                "description": "No bid.",
                "headers": {"X-No-Bid-Reason": {"schema": {"type": "string"}}},
            },
            "400": {"$ref": "#/components/responses/BadRequest"},
            "401": {"$ref": "#/components/responses/Unauthenticated"},
            "403": {"$ref": "#/components/responses/PermissionDenied"},
            "429": {"$ref": "#/components/responses/TooManyRequests"},
            "default": {"$ref": "#/components/responses/Error"},
        },
        "x-dispatches-to": f"/{BIDDING_SERVICE}/ProcessBid",
    }
    return {"post": operation}


class _Operations:
    """Turns the http rules of the selected services into path items."""

    def __init__(self, index: _Index, builder: _Builder) -> None:
        self.index, self.builder = index, builder
        self.paths: dict[str, dict[str, Schema]] = {}
        self.op_ids: set[str] = set()
        self._shapes: dict[str, str] = {}

    def query_params(
        self, message: str, prefix: str, json_prefix: str, excluded: set[str], seen: frozenset[str]
    ) -> list[Schema]:
        """Query parameters for the fields of `message` not bound elsewhere."""
        params: list[Schema] = []
        for field in self.index.messages[message].field:
            path, name = prefix + field.name, json_prefix + _json_name(field)
            if path in excluded or self.builder.map_entry(field) is not None:
                continue
            type_name = field.type_name.lstrip(".")
            comment = self.index.comments.get(f"{message}.{field.name}")
            if field.type in (FDP.TYPE_MESSAGE, FDP.TYPE_GROUP) and type_name not in _WKT_SCALAR:
                if (
                    field.label != FDP.LABEL_REPEATED
                    and type_name not in seen
                    and type_name not in _WKT_OTHER
                    and type_name in self.index.messages
                ):
                    params += self.query_params(
                        type_name, path + ".", name + ".", excluded, seen | {type_name}
                    )
                continue
            if field.type == FDP.TYPE_ENUM:  # inline, so clients see the names
                values = [v.name for v in self.index.enums[type_name].value]
                schema: Schema = {"type": "string", "enum": list(dict.fromkeys(values))}
            else:
                schema = self.builder.value_schema(field)
            if field.label == FDP.LABEL_REPEATED:
                schema = {"type": "array", "items": schema}
            param: Schema = {"name": name, "in": "query", "required": False, "schema": schema}
            if field.label == FDP.LABEL_REPEATED:
                param.update(style="form", explode=True)
            if comment:
                param["description"] = comment
            params.append(param)
        return params

    def path_parameters(
        self, request: str, template: str
    ) -> tuple[str, list[Schema], dict[str, str], set[str]]:
        """The OpenAPI path, its parameters, the field bindings and all bound fields.

        A path of the same shape as one seen before (only parameter names
        differ) reuses that path's names, as OpenAPI treats them as one path.
        """
        path, params, bindings = _expand_template(template)
        path = self._shapes.setdefault(re.sub(r"\{[^}]*\}", "{}", path), path)
        names = re.findall(r"\{([^}]*)\}", path)
        rename = dict(zip((p[0] for p in params), names, strict=True))
        bindings = {
            field_path: re.sub(r"\{([^}]*)\}", lambda m: "{" + rename[m[1]] + "}", rebuilt)
            for field_path, rebuilt in bindings.items()
        }
        parameters: list[Schema] = []
        for (_, field_path, multi), name in zip(params, names, strict=True):
            schema: Schema = {"type": "string"}
            if field_path is not None:
                schema = self.builder.value_schema(self.index.field(request, field_path))
                text = self.index.field_comment(request, field_path) or f"`{field_path}`."
            else:
                bound = [f for f, rebuilt in bindings.items() if "{" + name + "}" in rebuilt]
                text = f"Segment of `{bound[0]}` = `{bindings[bound[0]]}`." if bound else ""
            text = text or "Unbound wildcard segment."
            if multi:
                text += " May span several path segments."
            param = {"name": name, "in": "path", "required": True, "schema": schema}
            parameters.append({**param, "description": text})
        for field_path in bindings:
            self.index.field(request, field_path)  # raises on an unknown field
        return path, parameters, bindings, set(bindings) | {p[1] for p in params if p[1]}

    def add(
        self,
        service: str,
        method: descriptor_pb2.MethodDescriptorProto,
        rule: http_pb2.HttpRule,
        access: access_pb2.AccessRule,
    ) -> None:
        """Adds the operation of one http rule of a method."""
        kind = rule.WhichOneof("pattern")
        if kind is None:
            return
        verb, template = (
            (rule.custom.kind.lower(), rule.custom.path)
            if kind == "custom"
            else (kind, getattr(rule, kind))
        )
        if verb not in _OPENAPI_METHODS:
            raise ValueError(f"{service}.{method.name}: unsupported HTTP method {verb!r}")
        request, response = method.input_type.lstrip("."), method.output_type.lstrip(".")
        path, parameters, bindings, excluded = self.path_parameters(request, template)
        short = service.rsplit(".", 1)[-1]
        op_id = base = f"{short}_{method.name}"
        n = 1
        while op_id in self.op_ids:  # additional bindings: _1, _2, ...
            op_id, n = f"{base}_{n}", n + 1
        self.op_ids.add(op_id)
        operation: Schema = {"operationId": op_id, "tags": [short]}
        comment = self.index.comments.get(f"{service}.{method.name}")
        if comment:
            operation.update(summary=_summary(comment), description=comment)
        body: Schema | None = None
        if rule.body == "*":
            top = frozenset(p for p in excluded if "." not in p)
            body = self.builder.message_schema(request, top) if top else self.builder.ref(request)
        elif rule.body:
            body = self.builder.described(
                self.builder.field_schema(self.index.field(request, rule.body)),
                self.index.field_comment(request, rule.body),
            )
            excluded.add(rule.body)
        if body is not None:
            content = {"application/json": {"schema": body}}
            operation["requestBody"] = {"required": True, "content": content}
        if rule.body != "*":
            parameters += self.query_params(request, "", "", excluded, frozenset({request}))
        if parameters:
            operation["parameters"] = parameters
        codes = {"400": "BadRequest", "401": "Unauthenticated", "404": "NotFound"}
        codes.update({"429": "TooManyRequests", "default": "Error"})
        if not access.unauthenticated:
            codes["403"] = "PermissionDenied"
        if verb != "get":
            codes["409"] = "Conflict"
        responses: Schema = {c: {"$ref": f"#/components/responses/{r}"} for c, r in codes.items()}
        if response == HTTP_BODY:  # a file, streamed: its type is the method's to say
            responses["200"] = {
                "description": "The file, streamed (see the operation's description).",
                "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
            }
        else:
            if rule.response_body:
                ok = self.builder.field_schema(self.index.field(response, rule.response_body))
            else:
                ok = self.builder.ref(response)
            responses["200"] = {
                "description": "OK",
                "content": {"application/json": {"schema": ok}},
            }
        operation["responses"] = dict(sorted(responses.items()))
        operation["security"] = [] if access.unauthenticated else [{"bearerAuth": []}]
        if access.permission and not access.unauthenticated:
            try:
                permission = access_pb2.Permission.Name(access.permission)
            except ValueError:
                permission = str(access.permission)
            operation["x-required-permission"] = permission
        operation["x-mutating"] = access.mutating
        operation["x-grpc-method"] = f"/{service}/{method.name}"
        if bindings:
            operation["x-path-bindings"] = bindings
        item = self.paths.setdefault(path, {})
        if verb in item:
            other = item[verb]["operationId"]
            raise ValueError(f"{verb.upper()} {path} is bound by both {other} and {op_id}")
        item[verb] = operation


def build_openapi(
    descriptor_set: descriptor_pb2.FileDescriptorSet,
    *,
    services: Sequence[str] | None = None,
    title: str = "Campaign Express API",
    version: str = "v1",
    server_url: str | None = None,
) -> dict[str, Any]:
    """Builds the OpenAPI 3.1 document of the REST gateway.

    `descriptor_set` should carry source info (comments become descriptions)
    and every imported file. `services` selects services by full
    (``campaignexpress.auth.v1.AuthService``) or short name; default all.
    Methods without a ``google.api.http`` rule are left out. Raises
    ValueError for an unknown service, a malformed rule, or two rules bound
    to the same method and path.
    """
    index = _Index(descriptor_set)
    selected = sorted(index.services)
    if services is not None:
        wanted = set(services)
        selected = [s for s in selected if s in wanted or s.rsplit(".", 1)[-1] in wanted]
        found = set(selected) | {s.rsplit(".", 1)[-1] for s in selected}
        if missing := sorted(wanted - found):
            raise ValueError(f"unknown services: {', '.join(missing)}")
    builder = _Builder(index)
    ops = _Operations(index, builder)
    tags: list[Schema] = []
    for service in selected:
        added = False
        for method in index.services[service].method:
            if method.client_streaming or (
                method.server_streaming and method.output_type.lstrip(".") != HTTP_BODY
            ):
                continue  # streams are gRPC only, but for files (HttpBody)
            access, rules = _access(method)
            for rule in rules:
                ops.add(service, method, rule, access)
                added = True
        if added:
            tag: Schema = {"name": service.rsplit(".", 1)[-1]}
            if service in index.comments:
                tag["description"] = index.comments[service]
            tags.append(tag)
    paths: dict[str, Schema] = {p: dict(sorted(item.items())) for p, item in ops.paths.items()}
    paths.update(_platform_paths())
    if BIDDING_SERVICE in selected:
        paths[OPENRTB_BID_PATH] = _openrtb_bid_path()
        tags.append({"name": "OpenRTB", "description": "OpenRTB 2.6 JSON bidding for exchanges."})
    shared_schemas, responses = _shared_components()
    schemas = builder.finish()
    schemas.update(shared_schemas)
    info: Schema = {
        "title": title,
        "version": version,
        "description": (
            "REST/JSON mapping of the Campaign Express gRPC services. JSON uses lowerCamelCase "
            "field names (snake_case is accepted on input); enums are strings; 64-bit integers "
            "are strings; Timestamps are RFC 3339 strings."
        ),
    }
    document: dict[str, Any] = {"openapi": "3.1.0", "info": info}
    if server_url:
        document["servers"] = [{"url": server_url}]
    tags.append({"name": "Platform", "description": "Health checks and this document."})
    document["tags"] = sorted(tags, key=lambda t: str(t["name"]))
    document["paths"] = dict(sorted(paths.items()))
    document["components"] = {
        "schemas": dict(sorted(schemas.items())),
        "responses": dict(sorted(responses.items())),
        "securitySchemes": {
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "API key or JWT",
                "description": "`Authorization: Bearer <API key or JWT>`.",
            }
        },
    }
    return document
