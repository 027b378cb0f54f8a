"""Campaigns, offers, the governed workflow, budgets and pacing."""
