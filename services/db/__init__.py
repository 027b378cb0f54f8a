"""Management data: SQLAlchemy 2 (async) on a SQLite file by default or
PostgreSQL when DATABASE_URL says so. Each domain owns its tables
(services/<domain>/tables.py) and its Alembic history (services/<domain>/migrations/)."""

from services.db.engine import Database, normalize_database_url
from services.db.metadata import metadata

__all__ = ["Database", "metadata", "normalize_database_url"]
