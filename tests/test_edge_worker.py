"""The edge worker (edge/worker.js, FR-EDG-001..003) and the origin's OpenRTB
validator agree: one shared fixture set, which the origin's decoder accepts
and rejects here (naming the same field) and the worker's own tests (Node's
test runner, `node --test edge/`) check the worker against."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess

import orjson
import pytest

from services.bidding.openrtb_json import decode_bid_request
from services.common.errors import InvalidArgument

EDGE = pathlib.Path(__file__).parent.parent / "edge"
FIXTURES = json.loads((EDGE / "fixtures" / "openrtb-requests.json").read_text())


@pytest.mark.parametrize("fixture", FIXTURES, ids=[f["name"] for f in FIXTURES])
def test_the_origin_agrees_with_the_shared_fixture(fixture: dict[str, object]) -> None:
    raw = str(fixture["raw"]).encode() if "raw" in fixture else orjson.dumps(fixture["body"])
    if fixture["valid"]:
        decode_bid_request(raw, max_bytes=1 << 20)
        return
    with pytest.raises(InvalidArgument) as refused:
        decode_bid_request(raw, max_bytes=1 << 20)
    assert refused.value.field_violations[0].field == fixture["field"]


def test_the_worker_passes_its_own_tests_on_the_same_fixtures() -> None:
    node = shutil.which("node") or "/usr/bin/node"
    done = subprocess.run([node, "--test"], cwd=EDGE, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "# fail 0" in done.stdout and "# pass 3" in done.stdout, done.stdout
