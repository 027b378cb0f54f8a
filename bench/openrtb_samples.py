"""Realistic OpenRTB 2.6 bid requests for benchmarks and tests: 1-3
impressions (banner, video or native, sometimes with deals), a site or an app,
a device with a structured user agent, a user with extended ids and segments,
GDPR/US privacy/GPP, a supply chain and the `ext` objects exchanges send.
About 1.5 KB of JSON each."""

from __future__ import annotations

import random
from typing import Any

_UAS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/122.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_3 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.3 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/122.0.6261.64 Mobile Safari/537.36",
)
_SIZES = ((300, 250), (728, 90), (320, 50), (160, 600), (300, 600), (970, 250))
_CATEGORIES = ("IAB1", "IAB2", "IAB3", "IAB9", "IAB12", "IAB17", "IAB19", "IAB20")
_COUNTRIES = ("USA", "GBR", "DEU", "FRA", "CAN")
_TCF = (
    "CP1xyzAP1xyzAAGABCENAtEgAP_gAEPgAAAAg1NX_H__bX9j8Xr_6ft0eY1f9_j77uQzDhfNk-8F3L_W_LwX52E7NF36A"
)


def _imp(rng: random.Random, index: int) -> dict[str, Any]:
    imp: dict[str, Any] = {
        "id": str(index + 1),
        "tagid": f"slot-{rng.randrange(1000):03d}",
        "bidfloor": round(rng.uniform(0.05, 2.5), 2),
        "bidfloorcur": "USD",
        "secure": 1,
    }
    kind = rng.random()
    if kind < 0.7:
        formats = rng.sample(_SIZES, rng.randint(1, 3))
        imp["banner"] = {
            "format": [{"w": w, "h": h} for w, h in formats],
            "pos": rng.choice((0, 1, 3)),
            "battr": [1, 3, 8],
        }
    elif kind < 0.9:
        imp["video"] = {
            "mimes": ["video/mp4", "video/webm"],
            "minduration": 5,
            "maxduration": 30,
            "protocols": [2, 3, 5, 6],
            "w": 640,
            "h": 480,
            "plcmt": 1,
            "linearity": 1,
            "skip": 1,
            "skipafter": 5,
            "playbackmethod": [1, 3],
        }
    else:
        imp["native"] = {
            "request": '{"ver":"1.2","assets":[{"id":1,"required":1,"title":{"len":90}}]}',
            "ver": "1.2",
        }
    if rng.random() < 0.2:
        imp["pmp"] = {
            "private_auction": 0,
            "deals": [{"id": f"deal-{rng.randrange(100)}", "bidfloor": 3.0, "at": 1}],
        }
    imp["ext"] = {"gpid": f"/1234/home/slot-{index}"}
    return imp


def realistic_request(
    rng: random.Random, *, imps: int | None = None, user_id: str | None = None
) -> dict[str, Any]:
    """One bid request as a JSON-ready dict; `imps` defaults to 1-3."""
    count = imps if imps is not None else rng.choice((1, 1, 2, 3))
    ua = rng.choice(_UAS)
    mobile = "Mobile" in ua
    request: dict[str, Any] = {
        "id": f"{rng.getrandbits(64):016x}",
        "imp": [_imp(rng, i) for i in range(count)],
        "device": {
            "ua": ua,
            "sua": {
                "browsers": [{"brand": "Chromium", "version": ["122", "0"]}],
                "platform": {"brand": "Android" if mobile else "Windows", "version": ["14"]},
                "mobile": 1 if mobile else 0,
                "source": 2,
            },
            "ip": f"203.0.{rng.randrange(256)}.{rng.randrange(256)}",
            "devicetype": 4 if mobile else 2,
            "make": "Google" if mobile else "Dell",
            "os": "Android" if mobile else "Windows",
            "language": "en",
            "dnt": 0,
            "lmt": 0,
            "geo": {
                "country": rng.choice(_COUNTRIES),
                "zip": f"{rng.randrange(100000):05d}",
                "type": 2,
                "utcoffset": -300,
            },
        },
        "user": {
            "id": user_id or f"u{rng.randrange(100_000):06d}",
            "buyeruid": f"b{rng.getrandbits(40):010x}",
            "consent": _TCF,
            "eids": [
                {"source": "liveramp.com", "uids": [{"id": f"XY{rng.getrandbits(48):012x}"}]},
            ],
            "data": [{"id": "dmp", "segment": [{"id": str(rng.randrange(500))} for _ in range(2)]}],
        },
        "regs": {"gdpr": 1, "us_privacy": "1YNN", "ext": {"dsa": {"dsarequired": 1}}},
        "source": {
            "tid": f"{rng.getrandbits(128):032x}",
            "schain": {
                "complete": 1,
                "ver": "1.0",
                "nodes": [{"asi": "exchange.example", "sid": "pub-1234", "hp": 1}],
            },
        },
        "at": 1,
        "tmax": rng.choice((100, 120, 150, 200)),
        "cur": ["USD"],
        "bcat": rng.sample(_CATEGORIES, 3),
        "badv": ["competitor.example"],
        "ext": {"prebid": {"channel": "web"}},
    }
    if mobile and rng.random() < 0.5:
        request["app"] = {
            "id": "app-77",
            "bundle": "com.example.news",
            "storeurl": "https://play.google.com/store/apps/details?id=com.example.news",
            "cat": ["IAB12"],
            "publisher": {"id": "pub-1234", "name": "Example News"},
        }
        request["device"]["ifa"] = f"{rng.getrandbits(128):032x}"
    else:
        request["site"] = {
            "id": "site-42",
            "domain": "news.example",
            "page": f"https://news.example/articles/{rng.randrange(10_000)}",
            "cat": ["IAB12"],
            "publisher": {"id": "pub-1234", "name": "Example News"},
        }
    return request


def realistic_response(request: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """A bid for every impression of `request`, as the bid path answers."""
    bids = []
    for imp in request["imp"]:
        w, h = 300, 250
        if "banner" in imp:
            w, h = imp["banner"]["format"][0]["w"], imp["banner"]["format"][0]["h"]
        bid_id = f"{rng.getrandbits(64):016x}"
        bids.append(
            {
                "id": bid_id,
                "impid": imp["id"],
                "price": round(rng.uniform(0.5, 5.0), 4),
                "adid": "offer-0007",
                "nurl": f"https://bid.example/v1/win?bid={bid_id}&price=${{AUCTION_PRICE}}",
                "burl": f"https://bid.example/v1/billing?bid={bid_id}&price=${{AUCTION_PRICE}}",
                "lurl": f"https://bid.example/v1/loss?bid={bid_id}&reason=${{AUCTION_LOSS}}",
                "adm": f'<a href="https://shop.example/o/7"><img src="https://cdn.example/7.png" '
                f'width="{w}" height="{h}"></a>',
                "adomain": ["shop.example"],
                "cid": "campaign-3",
                "crid": "creative-7",
                "cat": ["IAB22"],
                "w": w,
                "h": h,
                "mtype": 1,
                "ext": {"campaignexpress": {"score": 0.8123, "tier": "gold"}},
            }
        )
    return {
        "id": request["id"],
        "seatbid": [{"seat": "campaign-express", "bid": bids}],
        "cur": "USD",
    }
