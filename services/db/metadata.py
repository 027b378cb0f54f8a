"""The one SQLAlchemy MetaData every domain's tables module adds its tables to
(services/<domain>/tables.py), so that foreign keys between domains resolve."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()
