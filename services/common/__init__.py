"""Pieces every domain shares: errors, resource names, pagination, time."""
