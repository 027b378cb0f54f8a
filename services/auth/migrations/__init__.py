"""Alembic revisions of the auth domain: its own branch, labelled `auth`."""
