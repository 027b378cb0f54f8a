"""The demo bids on every format without setup (FR-RTB-004): a varied mix
of OpenRTB 2.6 requests (banner, app with eids, multi-impression with a
deal, video, native, audio, DOOH, EUR floors) each gets a bid whose markup
is what its format's exchanges expect."""

from __future__ import annotations

import json
from typing import Any

import orjson

from tests.conftest import Env

USA = {"devicetype": 4, "geo": {"country": "USA"}}
NATIVE_REQUEST = json.dumps({"ver": "1.2", "assets": [
    {"id": 1, "required": 1, "title": {"len": 90}},
    {"id": 2, "required": 1, "img": {"type": 3, "w": 1200, "h": 627}},
]})  # fmt: skip

REQUESTS: dict[str, dict[str, Any]] = {
    "banner": {"imp": [{"id": "1", "banner": {"format": [{"w": 300, "h": 250}]},
                        "bidfloor": 0.5}], "site": {"domain": "news.example"}},
    "app with eids": {
        "imp": [{"id": "1", "banner": {"w": 320, "h": 50}, "bidfloor": 0.3}],
        "app": {"bundle": "com.news.reader", "storeurl": "https://apps.example/reader"},
        "user": {"id": "demo-user-0003",
                 "eids": [{"source": "id5-sync.com", "uids": [{"id": "ID5*x", "atype": 1}]}]},
    },
    "multi-imp with a deal": {"imp": [
        {"id": "1", "banner": {"format": [{"w": 300, "h": 250}]}, "bidfloor": 2.5,
         "pmp": {"private_auction": 1, "deals": [{"id": "demo-deal-1", "bidfloor": 2.5}]}},
        {"id": "2", "banner": {"format": [{"w": 728, "h": 90}]}, "bidfloor": 0.5},
    ], "site": {"domain": "news.example"}},
    "video": {"imp": [{"id": "1", "video": {"mimes": ["video/mp4"], "w": 640, "h": 480,
                                            "protocols": [7, 8], "minduration": 5,
                                            "maxduration": 30}, "bidfloor": 1.0}],
              "site": {"domain": "video.example"}},
    "native": {"imp": [{"id": "1", "native": {"request": NATIVE_REQUEST, "ver": "1.2"},
                        "bidfloor": 0.5}], "site": {"domain": "news.example"}},
    "audio": {"imp": [{"id": "1", "audio": {"mimes": ["audio/mpeg"], "minduration": 15,
                                            "maxduration": 30}, "bidfloor": 0.5}],
              "app": {"bundle": "fm.podcasts"}},
    "DOOH": {"imp": [{"id": "1", "banner": {"w": 1920, "h": 1080}, "bidfloor": 2.0,
                      "qty": {"multiplier": 12.5}}],
             "dooh": {"id": "screen-9", "venuetype": ["transit"]}},
    "EUR floors": {"imp": [{"id": "1", "banner": {"format": [{"w": 300, "h": 250}]},
                            "bidfloor": 1.2, "bidfloorcur": "EUR"}],
                   "site": {"domain": "presse.example"}, "cur": ["EUR"]},
}  # fmt: skip


async def test_the_demo_bids_on_every_format(env: Env) -> None:
    from services.host.demo import seed_demo

    seed = await seed_demo(env.running.platform)
    await seed_demo(env.running.platform)  # idempotent: no campaign twice
    index = env.running.platform.api("bidding").index
    await index.wait_for(lambda i: len(i.campaigns("demo")) >= 8, timeout=5.0)
    headers = {"Authorization": f"Bearer {seed.api_key}", "Content-Type": "application/json"}
    answers = {}
    for n, (label, body) in enumerate(REQUESTS.items()):
        request = {"id": f"mix-{n}", "device": USA, "user": {"id": f"visitor-{n}"},
                   "tmax": 500, **body}  # fmt: skip
        async with env.http.post(
            f"{env.base_url}/v1/bid", data=orjson.dumps(request), headers=headers
        ) as r:
            assert r.status == 200, (label, r.status, r.headers.get("X-No-Bid-Reason"))
            answers[label] = orjson.loads(await r.read())
    bids = {label: a["seatbid"][0]["bid"] for label, a in answers.items()}
    assert '<VAST version="4.2"' in bids["video"][0]["adm"]
    assert 'type="video/mp4"' in bids["video"][0]["adm"]
    assert 'type="audio/mpeg"' in bids["audio"][0]["adm"]
    native = json.loads(bids["native"][0]["adm"])["native"]
    assert native["ver"] == "1.2" and native["link"]["url"].startswith("http")
    assert (bids["DOOH"][0]["w"], bids["DOOH"][0]["h"]) == (1920, 1080)
    deal = {b["impid"]: b for b in bids["multi-imp with a deal"]}
    assert set(deal) == {"1", "2"} and deal["1"]["dealid"] == "demo-deal-1"
    assert deal["1"]["price"] >= 2.5 > deal["2"]["price"]  # the deal pays more
    assert answers["EUR floors"]["cur"] == "EUR" and bids["EUR floors"][0]["price"] >= 1.2
    for label, placed in bids.items():  # every markup's click goes through our notice
        for bid in placed:
            assert "${CLICK_URL}" not in bid["adm"], label
    async with env.http.get(
        f"{env.base_url}/v1/tenants/demo/campaigns?filter=labels.env%3Ddemo", headers=headers
    ) as r:
        assert len((await r.json())["campaigns"]) == 8


async def test_the_demo_banner_is_assembled_from_its_creative_template(env: Env) -> None:
    """Dynamic creative optimisation without setup: the demo's "Boots half
    page" (300x600) bids with variants of the demo creative template."""
    from services.host.demo import seed_demo

    seed = await seed_demo(env.running.platform)
    index = env.running.platform.api("bidding").index
    await index.wait_for(lambda i: len(i.campaigns("demo")) >= 8, timeout=5.0)
    headers = {"Authorization": f"Bearer {seed.api_key}", "Content-Type": "application/json"}
    template = f"{env.base_url}/v1/tenants/demo/creativeTemplates/boots-300x600"
    async with env.http.get(template, headers=headers) as r:
        assert r.status == 200 and (await r.json())["variantCount"] == 18
    variants = set()
    for n in range(40):
        request = {"id": f"dco-{n}", "device": USA, "user": {"id": f"visitor-{n}"}, "tmax": 500,
                   "imp": [{"id": "1", "banner": {"format": [{"w": 300, "h": 600}]}}],
                   "site": {"domain": "news.example"}}  # fmt: skip
        async with env.http.post(
            f"{env.base_url}/v1/bid", data=orjson.dumps(request), headers=headers
        ) as r:
            assert r.status == 200
            bid = orjson.loads(await r.read())["seatbid"][0]["bid"][0]
        if "." in bid["crid"]:  # the first bid may come before the template is read
            assert "<h2>" in bid["adm"] and "{{" not in bid["adm"]
            variants.add(bid["crid"].split(".", 1)[1])
    assert len(variants) >= 2, (variants, bid["adid"], bid["adm"])  # not one fixed creative
