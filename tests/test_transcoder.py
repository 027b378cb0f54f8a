"""Unit tests of the REST transcoding rules (no server)."""

from __future__ import annotations

import pytest
from google.protobuf import json_format

from campaignexpress.auth.v1 import auth_service_pb2
from campaignexpress.messaging.v1 import messaging_service_pb2
from campaignexpress.tenancy.v1 import tenancy_service_pb2
from gateway.transcoder import Router, build_request, compile_template, routes_for
from services.common.errors import InvalidArgument

TENANCY = tenancy_service_pb2.DESCRIPTOR.services_by_name["TenancyService"]
AUTH = auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"]
MESSAGING = messaging_service_pb2.DESCRIPTOR.services_by_name["MessagingService"]


@pytest.mark.parametrize(
    ("template", "path", "expected"),
    [
        ("/v1/{name=tenants/*}", "/v1/tenants/acme", {"name": "tenants/acme"}),
        ("/v1/{name=tenants/*/users/*}", "/v1/tenants/a/users/b", {"name": "tenants/a/users/b"}),
        ("/v1/{parent=tenants/*}/users", "/v1/tenants/a/users", {"parent": "tenants/a"}),
        (
            "/v1/{name=tenants/*/apiKeys/*}:revoke",
            "/v1/tenants/a/apiKeys/k:revoke",
            {"name": "tenants/a/apiKeys/k"},
        ),
        ("/v1/{path=files/**}", "/v1/files/a/b/c", {"path": "files/a/b/c"}),
        ("/v1/things/{id}", "/v1/things/42", {"id": "42"}),
    ],
)
def test_templates_bind_fields(template: str, path: str, expected: dict[str, str]) -> None:
    regex, variables = compile_template(template)
    match = regex.match(path)
    assert match is not None
    assert {field: match.group(group) for group, field in variables} == expected


@pytest.mark.parametrize(
    ("template", "path"),
    [
        ("/v1/{name=tenants/*}", "/v1/tenants/a/users/b"),
        ("/v1/{name=tenants/*}", "/v1/tenants/"),
        ("/v1/{name=tenants/*/apiKeys/*}:revoke", "/v1/tenants/a/apiKeys/k"),
    ],
)
def test_templates_reject_other_paths(template: str, path: str) -> None:
    regex, _ = compile_template(template)
    assert regex.match(path) is None


def test_router_prefers_literal_routes_and_lists_verbs() -> None:
    router = Router([*routes_for(TENANCY), *routes_for(AUTH)])
    route, values = router.match("GET", "/v1/tenants")  # type: ignore[misc]
    assert route.method.name == "ListTenants" and values == {}
    route, values = router.match("GET", "/v1/tenants/acme")  # type: ignore[misc]
    assert route.method.name == "GetTenant" and values == {"name": "tenants/acme"}
    route, _ = router.match("POST", "/v1/auth:login")  # type: ignore[misc]
    assert route.method.name == "Login"
    assert router.match("DELETE", "/v1/tenants") is None
    assert router.allowed_verbs("/v1/tenants/acme/users") == ["GET", "POST"]


def test_build_request_merges_path_body_and_query() -> None:
    router = Router(routes_for(TENANCY))
    route, values = router.match("PATCH", "/v1/tenants/a/users/b")  # type: ignore[misc]
    request = build_request(
        route,
        values,
        {"displayName": "X", "name": "tenants/evil/users/z"},
        [("updateMask", "displayName,roles")],
    )
    assert request.user.name == "tenants/a/users/b"  # the path wins over the body
    assert request.user.display_name == "X"
    assert list(request.update_mask.paths) == ["display_name", "roles"]


def test_build_request_reports_each_bad_query_parameter() -> None:
    router = Router(routes_for(TENANCY))
    route, values = router.match("GET", "/v1/tenants/a/users")  # type: ignore[misc]
    with pytest.raises(InvalidArgument) as caught:
        build_request(route, values, None, [("pageSize", "x"), ("bogus", "1")])
    assert {v.field for v in caught.value.field_violations} == {"pageSize", "bogus"}
    with pytest.raises(InvalidArgument):  # the path-bound field cannot be overridden
        build_request(route, values, None, [("parent", "tenants/b")])


def test_struct_fields_are_built_as_protobuf_builds_them() -> None:
    """Structs are set apart from the rest of the body (faster), with the
    same result as protobuf's JSON parser, at any depth and in lists."""
    router = Router(routes_for(MESSAGING))
    route, values = router.match("POST", "/v1/tenants/a/messages:batchSend")  # type: ignore[misc]
    data = {"n": 1, "x": [1.5, "two", None, True, {"deep": {"er": [[]]}}], "empty": {}}
    body = {
        "messages": [
            {"template": "t", "data": data, "recipient": {"email": "a@example.com"}},
            {"template": "u"},
            {"template": "v", "data": {}},
        ]
    }
    request = build_request(route, values, body, [])
    expected = json_format.ParseDict(
        {**body, "parent": "tenants/a"}, messaging_service_pb2.BatchSendMessagesRequest()
    )
    assert request == expected
    assert body["messages"][0]["data"] is data  # the caller's body is left as it was


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"messages": [{"data": 5}]}, "data"),  # a Struct that is not an object
        ({"messages": [{"data": {}, "template": 7}]}, "template"),
        ({"messages": "no"}, "messages"),
    ],
)
def test_struct_fields_keep_the_parsers_errors(body: dict[str, object], field: str) -> None:
    router = Router(routes_for(MESSAGING))
    route, values = router.match("POST", "/v1/tenants/a/messages:batchSend")  # type: ignore[misc]
    with pytest.raises(InvalidArgument) as caught:
        build_request(route, values, body, [])
    assert (
        field
        in caught.value.field_violations[0].field + caught.value.field_violations[0].description
    )
