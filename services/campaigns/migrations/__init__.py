"""Alembic revisions of the campaigns domain: its own branch, labelled `campaigns`."""
