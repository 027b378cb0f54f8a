"""Management data: SQLAlchemy 2 (async) tables and Alembic migrations, on a
SQLite file by default or PostgreSQL when DATABASE_URL says so."""

from services.db.engine import Database, normalize_database_url
from services.db.tables import metadata

__all__ = ["Database", "metadata", "normalize_database_url"]
