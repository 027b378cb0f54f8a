// node --test (Node's own runner): the worker's validator against the shared
// fixtures, and its fetch handler against a local origin (node:http).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import worker, { validateBidRequest, edgeRegion } from "./worker.js";

const fixtures = JSON.parse(readFileSync(new URL("./fixtures/openrtb-requests.json", import.meta.url)));

test("the validator accepts and rejects the shared fixtures as the origin does", () => {
  assert.ok(fixtures.length >= 20);
  for (const fixture of fixtures) {
    let problem;
    if ("raw" in fixture) {
      try {
        problem = validateBidRequest(JSON.parse(fixture.raw));
      } catch {
        problem = { field: "body", description: "is not valid JSON" };
      }
    } else {
      problem = validateBidRequest(fixture.body);
    }
    if (fixture.valid) {
      assert.equal(problem, null, fixture.name);
    } else {
      assert.ok(problem, `${fixture.name}: accepted`);
      assert.equal(problem.field, fixture.field, fixture.name);
    }
  }
});

test("requests are tagged with their edge region", () => {
  assert.equal(edgeRegion({ cf: { colo: "FRA", continent: "EU" } }), "FRA/EU");
  assert.equal(edgeRegion({}), "unknown");
});

test("good bids reach the origin tagged; bad ones are answered at the edge", async () => {
  const seen = [];
  const origin = createServer((req, res) => {
    let body = "";
    req.on("data", (chunk) => (body += chunk));
    req.on("end", () => {
      seen.push({ url: req.url, region: req.headers["x-edge-region"], auth: req.headers.authorization, body });
      res.writeHead(204, { "x-no-bid-reason": "BELOW_FLOOR" });
      res.end();
    });
  });
  await new Promise((resolve) => origin.listen(0, "127.0.0.1", resolve));
  const env = { ORIGIN_URL: `http://127.0.0.1:${origin.address().port}` };
  try {
    const good = fixtures.find((f) => f.valid).body;
    const request = new Request("https://bid.example.com/v1/bid", {
      method: "POST",
      headers: { authorization: "Bearer k", "content-type": "application/json" },
      body: JSON.stringify(good),
    });
    request.cf = { colo: "AMS", continent: "EU" };
    const answer = await worker.fetch(request, env);
    assert.equal(answer.status, 204);
    assert.equal(answer.headers.get("x-no-bid-reason"), "BELOW_FLOOR");
    assert.deepEqual(seen.map((s) => [s.url, s.region, s.auth]), [["/v1/bid", "AMS/EU", "Bearer k"]]);
    assert.deepEqual(JSON.parse(seen[0].body), good);

    const bad = new Request("https://bid.example.com/v1/bid", { method: "POST", body: '{"id": "x", "imp": []}' });
    const refused = await worker.fetch(bad, env);
    assert.equal(refused.status, 400);
    const error = (await refused.json()).error;
    assert.equal(error.status, "INVALID_ARGUMENT");
    assert.deepEqual(error.fieldViolations.map((v) => v.field), ["imp"]);
    const malformed = await worker.fetch(new Request("https://bid.example.com/v1/bid", { method: "POST", body: "{" }), env);
    assert.equal(malformed.status, 400);
    assert.equal(seen.length, 1); // neither reached the origin

    const other = await worker.fetch(new Request("https://bid.example.com/v1/win?t=x"), env);
    assert.equal(other.status, 204);
    assert.equal(seen[1].url, "/v1/win?t=x");
  } finally {
    origin.close();
  }
});
