"""Each domain owns its migration history (services/<domain>/migrations/, one
Alembic branch each). A database built by the single history that came
before (services/db/legacy, revisions 0001-0003) migrates forward with no data
lost and ends with exactly the schema of a fresh database, on SQLite and on
PostgreSQL."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from alembic import command

from services.audience.tables import audience_profiles
from services.db import Database
from services.db.engine import LEGACY, _config
from services.host.domains import DOMAINS
from services.host.platform import load_modules, migration_locations

LOCATIONS = migration_locations(load_modules().values())


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.backends)])
def database_url(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'cx.db'}"
    url: str = request.getfixturevalue("postgres_url_fresh")
    return url


@pytest.fixture
async def fresh_url(request: pytest.FixtureRequest, tmp_path: pathlib.Path, database_url: str):  # type: ignore[no-untyped-def]
    """A second, empty database of the same kind, for the fresh schema."""
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
    else:
        yield request.getfixturevalue("postgres_url_fresh_2")


async def legacy_database(url: str, revision: str) -> Database:
    """A database as the pre-domain history left it at `revision`."""
    db = Database(url)

    def upgrade(connection: sa.Connection) -> None:
        command.upgrade(_config(connection, [LEGACY]), revision)

    async with db.engine.begin() as connection:
        await connection.run_sync(upgrade)
    return db


ROWS: dict[str, dict[str, Any]] = {
    "tenants": dict(
        id="acme", display_name="Acme", labels={"k": "v"}, create_time=1, update_time=2, version=1
    ),
    "users": dict(
        id="u1",
        tenant_id="acme",
        email="ann@acme.example",
        display_name="Ann",
        roles=["ADMIN"],
        password_hash="$argon2id$x",
        disabled=False,
        create_time=3,
        update_time=4,
        version=2,
    ),
    "api_keys": dict(
        id="k1",
        tenant_id="acme",
        display_name="ci",
        roles=["VIEWER"],
        key_prefix="cx_abcdefg",
        secret_hash="h" * 64,
        create_time=5,
        last_used_time=None,
        revoke_time=None,
        expire_time=99,
    ),
    "refresh_tokens": dict(
        id="r1", tenant_id="acme", user_id="u1", token_hash="t" * 64, create_time=6, expire_time=7
    ),
    "audit_events": dict(
        id="a1",
        tenant_id="acme",
        actor="tenants/acme/users/u1",
        action="CreateUser",
        resource="tenants/acme/users/u2",
        event_time=8,
        outcome="OK",
        request_id="req",
        detail="",
    ),
    "campaigns": dict(
        id="c1",
        tenant_id="acme",
        display_name="Boots",
        stage="DRAFT",
        spec={"objective": "CONVERSIONS"},
        revision=1,
        approval_rule="",
        submission=0,
        start_time=None,
        end_time=None,
        version=1,
        create_time=9,
        update_time=10,
    ),
    "offers": dict(
        id="o1",
        tenant_id="acme",
        campaign_id="c1",
        display_name="Banner",
        status="ACTIVE",
        spec={"format": "BANNER"},
        version=1,
        create_time=11,
        update_time=12,
    ),
    "delivery_events": dict(
        campaign_id="c1",
        bid_id="b1",
        type="WIN",
        tenant_id="acme",
        amount_micros=2500,
        currency="USD",
        event_time=13,
        day="2026-12-06",
    ),
}
SPEND_DAY = dict(
    campaign_id="c1",
    day="2026-12-06",
    tenant_id="acme",
    spend_micros=2500,
    impressions=1,
    clicks=0,
    conversions=0,
    revenue_micros=0,
)


async def insert_rows(db: Database, rows: dict[str, dict[str, Any]]) -> None:
    async with db.engine.begin() as connection:
        meta = sa.MetaData()
        await connection.run_sync(meta.reflect)
        for table, row in rows.items():
            await connection.execute(meta.tables[table].insert().values(**row))


async def read_rows(db: Database, tables: list[str]) -> dict[str, list[dict[str, Any]]]:
    async with db.engine.connect() as connection:
        meta = sa.MetaData()
        await connection.run_sync(meta.reflect)
        found = {}
        for table in tables:
            result = await connection.execute(sa.select(meta.tables[table]))
            found[table] = [dict(r._mapping) for r in result]
        return found


def schema(connection: sa.Connection) -> dict[str, Any]:
    """Tables with their columns, keys, indexes and unique constraints."""
    inspector = sa.inspect(connection)
    described: dict[str, Any] = {}
    for table in sorted(inspector.get_table_names()):
        if table == "alembic_version":
            continue
        described[table] = {
            "columns": [
                (c["name"], str(c["type"]), c["nullable"], str(c.get("default")))
                for c in inspector.get_columns(table)
            ],
            "pk": sorted(inspector.get_pk_constraint(table)["constrained_columns"]),
            "fks": sorted(
                (tuple(fk["constrained_columns"]), fk["referred_table"])
                for fk in inspector.get_foreign_keys(table)
            ),
            "indexes": sorted(
                (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                for i in inspector.get_indexes(table)
            ),
            "unique": sorted(
                tuple(u["column_names"]) for u in inspector.get_unique_constraints(table)
            ),
        }
    return described


async def schema_of(db: Database) -> dict[str, Any]:
    async with db.engine.connect() as connection:
        return await connection.run_sync(schema)


async def versions_of(db: Database) -> set[str]:
    async with db.engine.connect() as connection:
        result = await connection.execute(sa.text("SELECT version_num FROM alembic_version"))
        return {row[0] for row in result}


@pytest.fixture
async def fresh_schema(fresh_url: str) -> AsyncIterator[dict[str, Any]]:
    db = Database(fresh_url)
    try:
        await db.migrate(LOCATIONS)
        yield await schema_of(db)
    finally:
        await db.close()


async def test_a_database_of_the_previous_main_migrates_with_no_data_lost(
    database_url: str, fresh_schema: dict[str, Any]
) -> None:
    db = await legacy_database(database_url, "0003")
    try:
        await insert_rows(db, {**ROWS, "spend_days": SPEND_DAY})
        before = await read_rows(db, [*ROWS, "spend_days"])
        await db.migrate(LOCATIONS)
        await db.migrate(LOCATIONS)  # idempotent
        assert await read_rows(db, [*ROWS, "spend_days"]) == before
        assert await schema_of(db) == fresh_schema
        versions = await versions_of(db)
        assert versions and not versions & {"0001", "0002", "0003"}
        assert {v.split("_")[0] for v in versions} <= set(DOMAINS)
    finally:
        await db.close()


async def test_an_older_database_runs_the_rest_of_the_old_history_first(
    database_url: str, fresh_schema: dict[str, Any]
) -> None:
    """At 0001 (before campaigns): 0002 and 0003 run, then the take-over."""
    db = await legacy_database(database_url, "0001")
    try:
        old = {t: ROWS[t] for t in ("tenants", "api_keys", "audit_events")}
        old_key = dict(old["api_keys"])
        await insert_rows(db, old)
        await db.migrate(LOCATIONS)
        rows = await read_rows(db, list(old))
        assert rows["tenants"] == [old["tenants"]]
        assert rows["api_keys"] == [{**old_key, "approval_roles": []}]
        assert await schema_of(db) == fresh_schema
    finally:
        await db.close()


def test_each_domain_owns_its_tables_and_history() -> None:
    modules = load_modules()
    owners = {"tenancy": "tenants", "auth": "api_keys", "audit": "audit_events"}
    for name, table in owners.items():
        module = modules[name]
        assert module.migrations == pathlib.Path("services", name, "migrations").resolve()
        revisions = "".join(p.read_text() for p in module.migrations.glob("*.py"))
        assert f'"{table}"' in revisions
        assert f'branch_labels = ("{name}",)' in revisions
    assert not list(pathlib.Path("services/db/migrations").glob("versions/*.py"))


async def test_profiles_green_tier_becomes_silver(database_url: str) -> None:
    """audience_0011: the old entry tier's name, in any case, is SILVER now;
    other traits and tiers stay as they were."""
    db = Database(database_url)
    try:

        def to_0010(connection: sa.Connection) -> None:
            config = _config(connection, LOCATIONS)
            command.upgrade(config, "heads")
            command.downgrade(config, "audience_0010")

        async with db.engine.begin() as connection:
            await connection.run_sync(to_0010)
        tiers = {"p1": "GREEN", "p2": "green", "p3": "GOLD", "p4": None}
        async with db.engine.begin() as connection:
            for pid, tier in tiers.items():
                traits = {"city": "Green Bay"} | ({"loyalty_tier": tier} if tier else {})
                await connection.execute(
                    audience_profiles.insert().values(
                        id=pid, tenant_id="acme", traits=traits, event_count=0,
                        first_seen_time=0, last_seen_time=0, version=3, create_time=0,
                        update_time=0, consent={},
                    )
                )  # fmt: skip
        await db.migrate(LOCATIONS)
        async with db.engine.connect() as connection:
            rows = (
                await connection.execute(
                    sa.text("SELECT id, traits, version FROM audience_profiles ORDER BY id")
                )
            ).all()
        got = {r[0]: ((orjson.loads(r[1]) if isinstance(r[1], str) else r[1]), r[2]) for r in rows}
        assert got["p1"] == ({"city": "Green Bay", "loyalty_tier": "SILVER"}, 4)
        assert got["p2"] == ({"city": "Green Bay", "loyalty_tier": "SILVER"}, 4)
        assert got["p3"] == ({"city": "Green Bay", "loyalty_tier": "GOLD"}, 3)
        assert got["p4"] == ({"city": "Green Bay"}, 3)
    finally:
        await db.close()
