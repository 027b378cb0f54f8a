"""The messaging domain: templates, channel providers, messages and their
delivery rules (docs/messaging.md)."""
