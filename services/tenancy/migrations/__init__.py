"""Alembic revisions of the tenancy domain: its own branch, labelled `tenancy`."""
