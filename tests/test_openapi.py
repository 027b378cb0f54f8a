"""Tests of the OpenAPI 3.1 generator (gateway/openapi.py).

The real document comes from gen/campaignexpress/descriptor_set.binpb; the synthetic one from
a FileDescriptorSet built here with unusual http rules.
"""

from __future__ import annotations

import json
import pathlib
import re
from typing import Any

import pytest
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2
from openapi_spec_validator import validate

from campaignexpress.type.v1 import access_pb2
from gateway.openapi import build_openapi, default_descriptor_set_path, load_descriptor_set

FDP = descriptor_pb2.FieldDescriptorProto
METHODS = ("get", "put", "post", "delete", "patch")


@pytest.fixture(scope="module")
def fds() -> descriptor_pb2.FileDescriptorSet:
    return load_descriptor_set()


@pytest.fixture(scope="module")
def doc(fds: descriptor_pb2.FileDescriptorSet) -> dict[str, Any]:
    return build_openapi(fds, server_url="https://api.example.com")


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, op)
        for path, item in document["paths"].items()
        for method, op in item.items()
    ]


def by_id(document: dict[str, Any], op_id: str) -> tuple[str, str, dict[str, Any]]:
    [found] = [o for o in operations(document) if o[2]["operationId"] == op_id]
    return found


def template_regex(template: str) -> re.Pattern[str]:
    """google.api.http template -> regex of the concrete paths it matches."""

    def pattern(segments: str) -> str:
        parts = []
        for seg in segments.split("/"):
            parts.append({"*": "[^/]+", "**": ".+"}.get(seg, re.escape(seg)))
        return "/".join(parts)

    out, pos = "", 0
    for m in re.finditer(r"\{([^}=]+)(?:=([^}]*))?\}", template):
        out += pattern(template[pos : m.start()]) if template[pos : m.start()] else ""
        out += pattern(m[2] or "*")
        pos = m.end()
    rest = template[pos:]
    verb = ""
    if ":" in rest:
        rest, verb = rest.split(":", 1)
        verb = re.escape(":" + verb)
    return re.compile("^" + out + pattern(rest) + verb + "$")


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "x1", path)


def http_rules(fds: descriptor_pb2.FileDescriptorSet) -> list[tuple[str, str, str, str]]:
    """(grpc method, http method, template) of every binding in the set."""
    found = []
    for file in fds.file:
        for service in file.service:
            for method in service.method:
                options = descriptor_pb2.MethodOptions.FromString(
                    method.options.SerializeToString()
                )
                if not options.HasExtension(annotations_pb2.http):
                    continue
                if method.client_streaming or (
                    method.server_streaming and method.output_type != ".google.api.HttpBody"
                ):
                    continue  # gRPC only: the gateway serves streams of files alone
                rule = options.Extensions[annotations_pb2.http]
                for r in [rule, *rule.additional_bindings]:
                    kind = r.WhichOneof("pattern")
                    assert kind in METHODS
                    grpc = f"/{file.package}.{service.name}/{method.name}"
                    found.append((grpc, kind, getattr(r, kind), service.name))
    return found


def test_document_is_valid_openapi_31(doc: dict[str, Any]) -> None:
    validate(doc)
    assert doc["openapi"] == "3.1.0"
    assert doc["servers"] == [{"url": "https://api.example.com"}]
    assert doc["info"]["title"] == "Campaign Express API"


def test_default_path_and_loading(tmp_path: pathlib.Path) -> None:
    assert default_descriptor_set_path().name == "descriptor_set.binpb"
    assert default_descriptor_set_path().is_file()
    with pytest.raises(FileNotFoundError):
        load_descriptor_set(tmp_path / "missing.binpb")


def test_every_http_rule_has_an_operation(
    fds: descriptor_pb2.FileDescriptorSet, doc: dict[str, Any]
) -> None:
    rules = http_rules(fds)
    assert len(rules) >= 18
    ops = [o for o in operations(doc) if "x-grpc-method" in o[2]]
    assert len(ops) == len(rules)
    for grpc, verb, template, service in rules:
        matching = [(m, p) for m, p, op in ops if op["x-grpc-method"] == grpc and m == verb]
        assert any(template_regex(template).match(concrete(p)) for _, p in matching), (
            grpc,
            template,
            matching,
        )
        # additional_bindings give one method several operations
        method_ops = [op for m, p, op in ops if op["x-grpc-method"] == grpc]
        assert method_ops
        for op in method_ops:
            assert op["tags"] == [service]
            assert op["operationId"].startswith(f"{service}_{grpc.rsplit('/', 1)[1]}")


def test_known_paths_and_path_params(doc: dict[str, Any]) -> None:
    expected = {
        "TenancyService_GetUser": ("get", "/v1/tenants/{tenant}/users/{user}"),
        "TenancyService_GetTenant": ("get", "/v1/tenants/{tenant}"),
        "TenancyService_UpdateTenant": ("patch", "/v1/tenants/{tenant}"),
        "TenancyService_ListUsers": ("get", "/v1/tenants/{tenant}/users"),
        "TenancyService_CreateTenant": ("post", "/v1/tenants"),
        "AuthService_RevokeApiKey": ("post", "/v1/tenants/{tenant}/apiKeys/{apiKey}:revoke"),
        "AuthService_Login": ("post", "/v1/auth:login"),
        "AuditService_ListAuditEvents": ("get", "/v1/tenants/{tenant}/auditEvents"),
    }
    for op_id, (verb, path) in expected.items():
        method, found_path, op = by_id(doc, op_id)
        assert (method, found_path) == (verb, path)
        names = re.findall(r"\{([^}]*)\}", path)
        path_params = [p for p in op.get("parameters", []) if p["in"] == "path"]
        assert [p["name"] for p in path_params] == names
        assert all(p["required"] and p["schema"] == {"type": "string"} for p in path_params)
    _, _, get_user = by_id(doc, "TenancyService_GetUser")
    assert get_user["x-path-bindings"] == {"name": "tenants/{tenant}/users/{user}"}
    _, _, update = by_id(doc, "TenancyService_UpdateUser")
    assert update["x-path-bindings"] == {"user.name": "tenants/{tenant}/users/{user}"}


def test_security_absent_exactly_on_unauthenticated(
    fds: descriptor_pb2.FileDescriptorSet, doc: dict[str, Any]
) -> None:
    unauthenticated = set()
    for file in fds.file:
        for service in file.service:
            for method in service.method:
                options = descriptor_pb2.MethodOptions.FromString(
                    method.options.SerializeToString()
                )
                if options.Extensions[access_pb2.access].unauthenticated:
                    unauthenticated.add(f"/{file.package}.{service.name}/{method.name}")
    assert unauthenticated >= {
        "/campaignexpress.auth.v1.AuthService/IssueToken",
        "/campaignexpress.auth.v1.AuthService/Login",
        "/campaignexpress.auth.v1.AuthService/RefreshToken",
    }
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    for _, _, op in operations(doc):
        if op["operationId"] == "OpenRtb_Bid":
            assert op["security"] == [{"bearerAuth": []}]
        elif "x-grpc-method" not in op:
            assert op["security"] == []
        elif op["x-grpc-method"] in unauthenticated:
            assert op["security"] == []
            assert "x-required-permission" not in op
            assert "403" not in op["responses"]
        else:
            assert op["security"] == [{"bearerAuth": []}]
            assert op["x-required-permission"].startswith("PERMISSION_")
    assert by_id(doc, "TenancyService_GetUser")[2]["x-required-permission"] == (
        "PERMISSION_USER_READ"
    )


def test_comments_become_descriptions(doc: dict[str, Any]) -> None:
    _, _, op = by_id(doc, "TenancyService_CreateTenant")
    assert op["summary"] == "Creates a tenant."
    assert "operator tenant" in op["description"]
    tags = {t["name"]: t.get("description", "") for t in doc["tags"]}
    assert "tenants" in tags["TenancyService"]
    user = doc["components"]["schemas"]["campaignexpress.tenancy.v1.User"]
    assert user["description"].startswith("User is a person")
    assert user["properties"]["email"]["description"].startswith("Sign-in email address")


def test_list_users_query_params(doc: dict[str, Any]) -> None:
    _, _, op = by_id(doc, "TenancyService_ListUsers")
    query = {p["name"]: p for p in op["parameters"] if p["in"] == "query"}
    assert set(query) == {"pageSize", "pageToken"}
    assert query["pageSize"]["schema"]["type"] == "integer"
    assert query["pageToken"]["schema"] == {"type": "string"}
    assert "Maximum number" in query["pageSize"]["description"]
    _, _, audit = by_id(doc, "AuditService_ListAuditEvents")
    audit_query = {p["name"]: p["schema"] for p in audit["parameters"] if p["in"] == "query"}
    assert audit_query["startTime"] == {"type": "string", "format": "date-time"}
    assert "parent" not in audit_query
    _, _, keys = by_id(doc, "AuthService_ListApiKeys")
    assert {p["name"]: p["schema"] for p in keys["parameters"]}["showRevoked"] == {
        "type": "boolean"
    }


def test_request_bodies(doc: dict[str, Any]) -> None:
    ref = "#/components/schemas/"
    _, _, create = by_id(doc, "TenancyService_CreateUser")
    body = create["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"] == ref + "campaignexpress.tenancy.v1.User"
    assert "parameters" not in create or all(p["in"] == "path" for p in create["parameters"])
    _, _, login = by_id(doc, "AuthService_Login")
    schema = login["requestBody"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": ref + "campaignexpress.auth.v1.LoginRequest"}
    assert "parameters" not in login
    _, _, revoke = by_id(doc, "AuthService_RevokeApiKey")
    schema = revoke["requestBody"]["content"]["application/json"]["schema"]
    assert "name" not in schema["properties"]
    _, _, get = by_id(doc, "TenancyService_GetTenant")
    assert "requestBody" not in get
    ok = get["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": ref + "campaignexpress.tenancy.v1.GetTenantResponse"}


def test_role_enum_and_wkt_mappings(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    role = schemas["campaignexpress.type.v1.Role"]
    assert role["type"] == "string"
    assert role["enum"][:3] == ["ROLE_UNSPECIFIED", "ROLE_ADMIN", "ROLE_MANAGER"]
    assert "ROLE_VIEWER" in role["enum"]
    assert "`ROLE_ADMIN`: Full access" in role["description"]
    tenant = schemas["campaignexpress.tenancy.v1.Tenant"]["properties"]
    assert tenant["labels"]["type"] == "object"
    assert tenant["labels"]["additionalProperties"] == {"type": "string"}
    assert tenant["createTime"]["type"] == "string"
    assert tenant["createTime"]["format"] == "date-time"
    assert "create_time" not in tenant
    user = schemas["campaignexpress.tenancy.v1.User"]["properties"]
    assert user["roles"]["type"] == "array"
    assert user["roles"]["items"] == {"$ref": "#/components/schemas/campaignexpress.type.v1.Role"}
    assert "displayName" in user
    _, _, update = by_id(doc, "TenancyService_UpdateTenant")
    query = {p["name"]: p["schema"] for p in update["parameters"] if p["in"] == "query"}
    assert query["updateMask"]["type"] == "string"
    assert "google.protobuf.Timestamp" not in schemas


def test_reachable_schemas_resolve(doc: dict[str, Any]) -> None:
    text = json.dumps(doc)
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', text))
    assert refs <= set(doc["components"]["schemas"])
    assert set(doc["components"]["schemas"]) - refs == set()
    assert "campaignexpress.tenancy.v1.Tenant" in refs


def test_errors_and_rate_limit(doc: dict[str, Any]) -> None:
    error = doc["components"]["schemas"]["Error"]["properties"]["error"]
    assert {"code", "status", "message", "reason", "domain", "metadata"} <= set(error["properties"])
    assert {"fieldViolations", "requestId"} <= set(error["properties"])
    assert "UNAUTHENTICATED" in error["properties"]["status"]["enum"]
    responses = doc["components"]["responses"]
    assert "Retry-After" in responses["TooManyRequests"]["headers"]
    for _, _, op in operations(doc):
        if "x-grpc-method" in op:
            codes = set(op["responses"])
            assert {"200", "400", "401", "404", "429", "default"} <= codes
    assert "409" in by_id(doc, "TenancyService_CreateUser")[2]["responses"]


def test_platform_endpoints(doc: dict[str, Any]) -> None:
    for path in ("/health", "/ready", "/live"):
        op = doc["paths"][path]["get"]
        assert set(op["responses"]) == {"200", "503"}
        assert op["security"] == []
    assert "/openapi.json" in doc["paths"]


def test_operation_ids_unique_and_output_deterministic(
    fds: descriptor_pb2.FileDescriptorSet, doc: dict[str, Any]
) -> None:
    ids = [op["operationId"] for _, _, op in operations(doc)]
    assert len(ids) == len(set(ids))
    shuffled = descriptor_pb2.FileDescriptorSet()
    shuffled.file.extend(reversed(fds.file))
    again = build_openapi(shuffled, server_url="https://api.example.com")
    assert json.dumps(again) == json.dumps(doc)
    assert list(doc["paths"]) == sorted(doc["paths"])


def test_service_filter(fds: descriptor_pb2.FileDescriptorSet) -> None:
    only = build_openapi(fds, services=["campaignexpress.audit.v1.AuditService"])
    grpc = {op["x-grpc-method"] for _, _, op in operations(only) if "x-grpc-method" in op}
    assert grpc == {"/campaignexpress.audit.v1.AuditService/ListAuditEvents"}
    assert "campaignexpress.tenancy.v1.User" not in only["components"]["schemas"]
    assert build_openapi(fds, services=["AuthService"])["paths"].keys() >= {"/v1/auth:login"}
    with pytest.raises(ValueError, match="unknown services"):
        build_openapi(fds, services=["nope.v1.NoService"])


# --- synthetic descriptor set -------------------------------------------------


def _field(
    name: str,
    number: int,
    kind: FDP.Type.ValueType,
    type_name: str = "",
    *,
    repeated: bool = False,
    oneof: int | None = None,
) -> descriptor_pb2.FieldDescriptorProto:
    field = FDP(name=name, number=number, type=kind)  # no json_name: derived from the name
    field.label = FDP.LABEL_REPEATED if repeated else FDP.LABEL_OPTIONAL
    if type_name:
        field.type_name = type_name
    if oneof is not None:
        field.oneof_index = oneof
    return field


def _synthetic(extra: http_pb2.HttpRule | None = None) -> descriptor_pb2.FileDescriptorSet:
    file = descriptor_pb2.FileDescriptorProto(name="acme/v2/shelf.proto", package="acme.v2")
    color = file.enum_type.add(name="Color")
    color.value.add(name="COLOR_UNSPECIFIED", number=0)
    color.value.add(name="COLOR_RED", number=1)
    widget = file.message_type.add(name="Widget")
    entry = widget.nested_type.add(name="DeadlinesEntry")
    entry.options.map_entry = True
    entry.field.extend(
        [
            _field("key", 1, FDP.TYPE_INT32),
            _field("value", 2, FDP.TYPE_MESSAGE, ".google.protobuf.Timestamp"),
        ]
    )
    widget.oneof_decl.add(name="kind")
    widget.field.extend(
        [
            _field("name", 1, FDP.TYPE_STRING),
            _field(
                "deadlines", 2, FDP.TYPE_MESSAGE, ".acme.v2.Widget.DeadlinesEntry", repeated=True
            ),
            _field("label_text", 3, FDP.TYPE_STRING, oneof=0),
            _field("serial_number", 4, FDP.TYPE_UINT64, oneof=0),
            _field("colors", 5, FDP.TYPE_ENUM, ".acme.v2.Color", repeated=True),
            _field("parent", 6, FDP.TYPE_MESSAGE, ".acme.v2.Widget"),
            _field("blob", 7, FDP.TYPE_BYTES),
            _field("ttl", 8, FDP.TYPE_MESSAGE, ".google.protobuf.Duration"),
            _field("attrs", 9, FDP.TYPE_MESSAGE, ".google.protobuf.Struct"),
            _field("price", 10, FDP.TYPE_MESSAGE, ".google.protobuf.DoubleValue"),
        ]
    )
    request = file.message_type.add(name="UpdateWidgetRequest")
    request.field.extend(
        [
            _field("widget", 1, FDP.TYPE_MESSAGE, ".acme.v2.Widget"),
            _field("update_mask", 2, FDP.TYPE_MESSAGE, ".google.protobuf.FieldMask"),
            _field("tags", 3, FDP.TYPE_STRING, repeated=True),
            _field("colors", 4, FDP.TYPE_ENUM, ".acme.v2.Color", repeated=True),
        ]
    )
    file.message_type.add(name="Empty")
    service = file.service.add(name="ShelfService")
    update = service.method.add(
        name="UpdateWidget",
        input_type=".acme.v2.UpdateWidgetRequest",
        output_type=".acme.v2.Widget",
    )
    rule = update.options.Extensions[annotations_pb2.http]
    rule.patch = "/v2/{widget.name=shelves/*/widgets/**}"
    rule.body = "widget"
    rule.additional_bindings.add(post="/v2/{widget.name=shelves/*/widgets/*}:frob", body="*")
    rule.additional_bindings.add(get="/v2/widgets/{widget.name}")
    if extra is not None:
        rule.additional_bindings.add().CopyFrom(extra)
    update.options.Extensions[access_pb2.access].unauthenticated = True
    service.method.add(name="NoHttp", input_type=".acme.v2.Empty", output_type=".acme.v2.Empty")
    echo = service.method.add(
        name="Echo", input_type=".acme.v2.Empty", output_type=".google.protobuf.Empty"
    )
    echo_rule = echo.options.Extensions[annotations_pb2.http]
    echo_rule.custom.kind = "HEAD"
    echo_rule.custom.path = "/v2/echo"
    echo.options.Extensions[access_pb2.access].permission = access_pb2.PERMISSION_DCO_READ
    loc = file.source_code_info.location.add(path=[6, 0, 2, 0])
    loc.leading_comments = " Updates a widget. Or frobs it.\n Second line.\n"
    loc = file.source_code_info.location.add(path=[4, 0, 2, 4])
    loc.leading_comments = " Colours of the widget.\n"
    loc = file.source_code_info.location.add(path=[4, 0, 2, 0])
    loc.trailing_comments = " Resource name.\n"
    return descriptor_pb2.FileDescriptorSet(file=[file])


def test_synthetic_unusual_rules() -> None:
    doc = build_openapi(_synthetic(), title="Acme", version="v2")
    validate(doc)
    ops = {op["operationId"]: (m, p, op) for m, p, op in operations(doc)}
    assert set(ops) >= {
        "ShelfService_UpdateWidget",
        "ShelfService_UpdateWidget_1",
        "ShelfService_UpdateWidget_2",
        "ShelfService_Echo",
    }
    assert not any("NoHttp" in i for i in ops)

    method, path, patch = ops["ShelfService_UpdateWidget"]
    assert (method, path) == ("patch", "/v2/shelves/{shelf}/widgets/{widget}")
    assert patch["x-path-bindings"] == {"widget.name": "shelves/{shelf}/widgets/{widget}"}
    assert "several path segments" in patch["parameters"][1]["description"]
    assert patch["summary"] == "Updates a widget."
    assert patch["description"] == "Updates a widget. Or frobs it.\nSecond line."
    assert patch["security"] == []
    body = patch["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"] == "#/components/schemas/acme.v2.Widget"
    query = {p["name"]: p for p in patch["parameters"] if p["in"] == "query"}
    assert set(query) == {"updateMask", "tags", "colors"}
    assert query["tags"]["schema"] == {"type": "array", "items": {"type": "string"}}
    assert query["tags"]["explode"] is True
    assert query["colors"]["schema"]["items"]["enum"] == ["COLOR_UNSPECIFIED", "COLOR_RED"]

    method, path, frob = ops["ShelfService_UpdateWidget_1"]
    assert (method, path) == ("post", "/v2/shelves/{shelf}/widgets/{widget}:frob")
    assert "parameters" in frob and all(p["in"] == "path" for p in frob["parameters"])
    frob_body = frob["requestBody"]["content"]["application/json"]["schema"]
    assert frob_body == {"$ref": "#/components/schemas/acme.v2.UpdateWidgetRequest"}

    method, path, get = ops["ShelfService_UpdateWidget_2"]
    assert (method, path) == ("get", "/v2/widgets/{widget.name}")
    names = {p["name"] for p in get["parameters"] if p["in"] == "query"}
    assert "widget.name" not in names
    assert {"widget.labelText", "widget.serialNumber", "widget.blob", "widget.ttl"} <= names
    assert {"widget.price", "widget.colors", "updateMask"} <= names
    assert not {"widget.deadlines", "widget.attrs"} & names
    assert not any(q.startswith("widget.parent") for q in names)

    method, path, echo = ops["ShelfService_Echo"]
    assert (method, path) == ("head", "/v2/echo")
    assert echo["x-required-permission"] == "PERMISSION_DCO_READ"
    assert echo["security"] == [{"bearerAuth": []}]
    assert echo["responses"]["200"]["content"]["application/json"]["schema"]["type"] == "object"

    widget = doc["components"]["schemas"]["acme.v2.Widget"]
    props = widget["properties"]
    assert props["deadlines"]["additionalProperties"] == {"type": "string", "format": "date-time"}
    assert props["deadlines"]["propertyNames"] == {"pattern": "^-?[0-9]+$"}
    assert props["serialNumber"]["type"] == "string"
    assert props["serialNumber"]["format"] == "int64"
    assert props["blob"]["contentEncoding"] == "base64"
    assert props["ttl"]["type"] == "string"
    assert props["attrs"] == {"type": "object", "additionalProperties": True}
    assert props["price"] == {"type": "number", "format": "double"}
    assert props["parent"] == {"$ref": "#/components/schemas/acme.v2.Widget"}
    assert props["colors"]["description"] == "Colours of the widget."
    assert "oneof `kind`" in props["labelText"]["description"]
    assert "`labelText`, `serialNumber`" in widget["description"]


def test_synthetic_conflicts_and_bad_rules() -> None:
    clash = http_pb2.HttpRule(patch="/v2/{widget.name=shelves/*/widgets/*}", body="*")
    with pytest.raises(ValueError, match="bound by both"):
        build_openapi(_synthetic(clash))
    bad_field = http_pb2.HttpRule(get="/v2/{widget.nope=things/*}")
    with pytest.raises(ValueError, match="no field 'nope'"):
        build_openapi(_synthetic(bad_field))
    # Same shape as the PATCH path: it reuses that path's parameter names.
    renamed = http_pb2.HttpRule(delete="/v2/shelves/*/widgets/{widget.name}")
    doc = build_openapi(_synthetic(renamed))
    validate(doc)
    delete = doc["paths"]["/v2/shelves/{shelf}/widgets/{widget}"]["delete"]
    assert delete["operationId"] == "ShelfService_UpdateWidget_3"
    first, second = delete["parameters"][:2]
    assert (first["name"], first["description"]) == ("shelf", "Unbound wildcard segment.")
    assert (second["name"], second["description"]) == ("widget", "Resource name.")
    assert "x-path-bindings" not in delete
    with pytest.raises(ValueError, match="must start with"):
        build_openapi(_synthetic(http_pb2.HttpRule(get="v2/widgets")))
    with pytest.raises(ValueError, match="unsupported HTTP method"):
        build_openapi(_synthetic(http_pb2.HttpRule(custom={"kind": "FETCH", "path": "/v2/x"})))


def test_openrtb_bid_and_no_stream_paths(doc: dict[str, Any]) -> None:
    """The gateway's own OpenRTB route is documented; gRPC-only streams are not
    (the gateway answers 404/405 there)."""
    bid = doc["paths"]["/v1/bid"]["post"]
    assert bid["operationId"] == "OpenRtb_Bid"
    assert set(bid["responses"]) >= {"200", "204", "400", "401"}
    schema = bid["requestBody"]["content"]["application/json"]["schema"]
    assert schema["required"] == ["id", "imp"]
    assert "/v1/bidding:stream" not in doc["paths"]
    assert not any(
        op.get("x-grpc-method", "").endswith("/StreamBids") for _, _, op in operations(doc)
    )


def test_a_streamed_file_is_documented_as_binary(doc: dict[str, Any]) -> None:
    export = doc["paths"]["/v1/tenants/{tenant}/segments/{segment}/members:export"]["get"]
    assert export["x-grpc-method"].endswith("/ExportSegmentMembers")
    assert export["responses"]["200"]["content"] == {
        "*/*": {"schema": {"type": "string", "format": "binary"}}
    }
    names = [p["name"] for p in export.get("parameters", [])]
    assert "format" in names
