"""Alembic revisions of the audit domain: its own branch, labelled `audit`."""
