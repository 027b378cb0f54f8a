// Campaign Express at the edge (FR-EDG-001..003): a Cloudflare Worker, in
// Workers module syntax, in front of the origin's bid path.
//
// - POST /v1/bid: the OpenRTB 2.6 JSON body is checked here (the rules of the
//   origin's validator, services/bidding/request_rules.py, that need no state)
//   and a bad request is answered 400 at the edge, naming the field, as the
//   origin would; a good one goes on to the origin.
// - Every request forwarded carries its edge region (`x-edge-region`, from
//   Cloudflare's `request.cf`: the data centre's colo and the visitor's
//   continent), for latency-aware routing and reports.
// - Anything else is passed to the origin as it is.
//
// env.ORIGIN_URL: the origin's base URL (e.g. https://bid-origin.example.com).
// The fixtures in edge/fixtures/ are shared with the Python validator's tests
// (tests/test_edge_worker.py): both accept and reject the same requests.

const MAX_BODY_BYTES = 4 * 1024 * 1024;
const SIZE_PX = [1, 10000];
const FLOOR_CPM = [0, 1000];
const TMAX_MS = [1, 10000];
const CURRENCY = /^[A-Z]{3}$/;
const OBJECTS = ["site", "app", "dooh", "device", "user", "regs", "source"];
const MEDIA = ["banner", "video", "audio", "native"];

class Invalid extends Error {
  constructor(field, description) {
    super(`invalid ${field}: ${description}`);
    this.field = field;
    this.description = description;
  }
}

const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);

function integer(value, field) {
  if (typeof value !== "number" || !Number.isInteger(value)) {
    throw new Invalid(field, "must be an integer");
  }
  return value;
}

function size(value, field) {
  if (value === undefined || value === null) return;
  const px = integer(value, field);
  if (px < SIZE_PX[0] || px > SIZE_PX[1]) {
    throw new Invalid(field, `must be between ${SIZE_PX[0]} and ${SIZE_PX[1]} pixels`);
  }
}

function currency(value, field) {
  if (typeof value !== "string") throw new Invalid(field, "must be a string");
  if (!CURRENCY.test(value)) {
    throw new Invalid(field, "must be an ISO 4217 currency code (three capital letters)");
  }
}

function requiredId(value, field) {
  if (value === undefined || value === null) throw new Invalid(field, "is required");
  if (typeof value !== "string") throw new Invalid(field, "must be a string");
  if (value === "") throw new Invalid(field, "must not be empty");
}

function checkImp(imp, at, seen) {
  if (!isObject(imp)) throw new Invalid(at, "must be an object");
  requiredId(imp.id, `${at}.id`);
  if (seen.has(imp.id)) throw new Invalid(`${at}.id`, `duplicates imp[${seen.get(imp.id)}].id`);
  for (const media of MEDIA) {
    const m = imp[media];
    if (m === undefined || m === null) continue;
    if (!isObject(m)) throw new Invalid(`${at}.${media}`, "must be an object");
    if (media !== "native" && media !== "audio") {
      size(m.w, `${at}.${media}.w`);
      size(m.h, `${at}.${media}.h`);
    }
    if (media === "banner" && m.format !== undefined && m.format !== null) {
      if (!Array.isArray(m.format)) throw new Invalid(`${at}.banner.format`, "must be an array");
      m.format.forEach((f, i) => {
        const where = `${at}.banner.format[${i}]`;
        if (!isObject(f)) throw new Invalid(where, "must be an object");
        size(f.w, `${where}.w`);
        size(f.h, `${where}.h`);
      });
    }
  }
  if (imp.bidfloor !== undefined && imp.bidfloor !== null) {
    const floor = imp.bidfloor;
    if (typeof floor !== "number") throw new Invalid(`${at}.bidfloor`, "must be a number");
    if (!(floor >= FLOOR_CPM[0] && floor <= FLOOR_CPM[1])) {
      throw new Invalid(`${at}.bidfloor`, `must be between ${FLOOR_CPM[0]} and ${FLOOR_CPM[1]} (CPM)`);
    }
  }
  if (imp.bidfloorcur !== undefined && imp.bidfloorcur !== null) {
    currency(imp.bidfloorcur, `${at}.bidfloorcur`);
  }
}

// The first problem of a parsed bid request as {field, description}, or null.
export function validateBidRequest(request) {
  try {
    if (!isObject(request)) throw new Invalid("body", "must be an object");
    requiredId(request.id, "id");
    const imps = request.imp;
    if (imps === undefined || imps === null) throw new Invalid("imp", "is required");
    if (!Array.isArray(imps)) throw new Invalid("imp", "must be an array");
    if (imps.length === 0) throw new Invalid("imp", "must hold at least one impression");
    const seen = new Map();
    imps.forEach((imp, i) => {
      checkImp(imp, `imp[${i}]`, seen);
      seen.set(imp.id, i);
    });
    if (request.tmax !== undefined && request.tmax !== null) {
      const tmax = integer(request.tmax, "tmax");
      if (tmax < TMAX_MS[0] || tmax > TMAX_MS[1]) {
        throw new Invalid("tmax", `must be between ${TMAX_MS[0]} and ${TMAX_MS[1]} milliseconds`);
      }
    }
    if (request.cur !== undefined && request.cur !== null) {
      if (!Array.isArray(request.cur)) throw new Invalid("cur", "must be an array");
      request.cur.forEach((c, i) => currency(c, `cur[${i}]`));
    }
    for (const key of OBJECTS) {
      if (request[key] !== undefined && request[key] !== null && !isObject(request[key])) {
        throw new Invalid(key, "must be an object");
      }
    }
    return null;
  } catch (error) {
    if (error instanceof Invalid) return { field: error.field, description: error.description };
    throw error;
  }
}

// The edge region of a request: Cloudflare's data centre, and the visitor's continent.
export function edgeRegion(request) {
  const cf = request.cf || {};
  return [cf.colo, cf.continent].filter(Boolean).join("/") || "unknown";
}

function invalidArgument(problem) {
  const body = {
    error: {
      code: 400,
      status: "INVALID_ARGUMENT",
      message: `invalid ${problem.field}: ${problem.description}`,
      reason: "INVALID_OPENRTB_AT_EDGE",
      fieldViolations: [problem],
    },
  };
  return new Response(JSON.stringify(body), {
    status: 400,
    headers: { "content-type": "application/json", "x-openrtb-version": "2.6" },
  });
}

async function forward(request, env, body) {
  const url = new URL(request.url);
  const origin = new URL(env.ORIGIN_URL);
  url.protocol = origin.protocol;
  url.host = origin.host;
  const headers = new Headers(request.headers);
  headers.set("x-edge-region", edgeRegion(request));
  return fetch(url.toString(), { method: request.method, headers, body });
}

export default {
  async fetch(request, env) {
    const { pathname } = new URL(request.url);
    if (request.method !== "POST" || pathname !== "/v1/bid") {
      return forward(request, env, request.body);
    }
    const raw = await request.arrayBuffer();
    if (raw.byteLength > MAX_BODY_BYTES) {
      return invalidArgument({ field: "body", description: `is over ${MAX_BODY_BYTES} bytes` });
    }
    const encoding = request.headers.get("content-encoding");
    if (!encoding || encoding === "identity") {  // compressed bodies: the origin decodes them
      let parsed;
      try {
        parsed = JSON.parse(new TextDecoder().decode(raw));
      } catch (error) {
        return invalidArgument({ field: "body", description: "is not valid JSON" });
      }
      const problem = validateBidRequest(parsed);
      if (problem) return invalidArgument(problem);
    }
    return forward(request, env, raw);
  },
};
