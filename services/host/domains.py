"""The domains this build can run: one line each, in dependency order (start-up,
demo data and tenant bootstrap follow it). A domain is the package
`services/<name>/`, whose `module.py` declares it (`MODULE`): its gRPC
services, how it is built from the kernel, its tables and migrations, the
in-process interfaces it offers, its background work and its demo data.

Adding a domain is its proto, its folder and one line here; deleting one is
deleting those. The host imports domain modules only through this list."""

from __future__ import annotations

DOMAINS: tuple[str, ...] = (
    "tenancy",
    "auth",
    "audit",
    "audience",
    "messaging",
    "campaigns",
    "journeys",
    "decisioning",
    "loyalty",
    "inference",
    "bidding",
)
