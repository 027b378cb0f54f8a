"""Credentials: API keys, JWT access tokens, refresh tokens, RBAC."""
