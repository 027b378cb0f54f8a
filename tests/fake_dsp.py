"""A fake DSP for the demand-partner tests and bench: a local HTTP server that
answers OpenRTB 2.6 bid requests as the partner is told to (a bid, a no-bid,
late, an error, a malformed answer) and checks each request against its
platform's contract (services/bidding/partners.py ADAPTERS: the credential's
place, Meta's account, placement and authentication id). Its own win notice
URL records the notices forwarded to it."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import random
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


@dataclass
class FakeDsp:
    platform: str
    credential: str = "secret-1"
    account_id: str = ""
    placement_id: str = ""
    price: float = 2.0
    delay_s: tuple[float, float] = (0.0, 0.0)  # each answer waits a draw from this range
    status: int = 200  # 500: fails; 204: no bid
    malformed: bytes = b""  # answered instead of a bid response
    wrong_id: bool = False
    currency: str = "USD"
    bid_fields: dict[str, Any] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    wins: list[dict[str, str]] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> FakeDsp:
        app = web.Application()
        app.router.add_post("/bid", self._bid)
        app.router.add_get("/win", self._win)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def endpoint(self) -> str:
        return f"{self.url}/bid"

    def _check(self, request: web.Request, body: Any) -> list[str]:
        problems = []
        if request.headers.get("Content-Type") != "application/json":
            problems.append("Content-Type is not application/json")
        if request.headers.get("x-openrtb-version") != "2.6":
            problems.append("x-openrtb-version is not 2.6")
        if not isinstance(body, dict) or not body.get("id") or not body.get("imp"):
            return [*problems, "not an OpenRTB request (id, imp)"]
        if any(not isinstance(imp, dict) or not imp.get("id") for imp in body["imp"]):
            problems.append("an imp has no id")
        auth = request.headers.get("Authorization", "")
        if self.platform in ("dv360", "trade_desk") and auth != f"Bearer {self.credential}":
            problems.append(f"Authorization is {auth!r}")
        if self.platform == "amazon" and request.headers.get("x-api-key") != self.credential:
            problems.append("x-api-key is not the credential")
        if self.platform == "meta":
            ext = body.get("ext") or {}
            if ext.get("platformid") != self.account_id:
                problems.append("ext.platformid is not the account")
            wanted = hmac.new(
                self.credential.encode(), str(body["id"]).encode(), hashlib.sha256
            ).hexdigest()
            if ext.get("authentication_id") != wanted:
                problems.append("ext.authentication_id is not the request id's HMAC")
            if any(imp.get("tagid") != self.placement_id for imp in body["imp"]):
                problems.append("an imp's tagid is not the placement")
            if auth:
                problems.append("Meta takes no Authorization header")
        return problems

    async def _bid(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        self.requests.append(body if isinstance(body, dict) else {})
        problems = self._check(request, body)
        if problems:
            self.problems.extend(problems)
            return web.Response(status=400, text="; ".join(problems))
        low, high = self.delay_s
        if high > 0:
            await asyncio.sleep(random.uniform(low, high))
        if self.status != 200:
            return web.Response(status=self.status)
        if self.malformed:
            return web.Response(body=self.malformed, content_type="application/json")
        bids = [
            {
                "id": f"{self.platform}-bid-{i}", "impid": imp["id"], "price": self.price,
                "adm": f"<div>{self.platform} ad</div>", "crid": f"{self.platform}-creative",
                "adomain": [f"{self.platform}.example"], "w": 300, "h": 250,
                "nurl": f"{self.url}/win?auction=${{AUCTION_ID}}&bid=${{AUCTION_BID_ID}}"
                        "&imp=${AUCTION_IMP_ID}&price=${AUCTION_PRICE}&cur=${AUCTION_CURRENCY}",
                **self.bid_fields,
            }
            for i, imp in enumerate(body["imp"])
        ]  # fmt: skip
        answer = {
            "id": "not-the-request" if self.wrong_id else body["id"],
            "cur": self.currency,
            "seatbid": [{"seat": "buyer-1", "bid": bids}],
        }
        return web.Response(body=orjson.dumps(answer), content_type="application/json")

    async def _win(self, request: web.Request) -> web.Response:
        self.wins.append(dict(request.query))
        return web.Response(text="ok")


async def _serve_forever(platforms: list[str], delay: tuple[float, float]) -> None:
    fakes = []
    for n, platform in enumerate(platforms):
        fakes.append(await FakeDsp(platform, price=1.8 + 0.4 * n, delay_s=delay).start())
    print(" ".join(f.endpoint for f in fakes), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":  # fake DSPs in a process of their own (bench.partners)
    import sys

    low, high = (float(v) for v in sys.argv[1].split("-"))
    asyncio.run(_serve_forever(sys.argv[2:], (low / 1e3, high / 1e3)))
