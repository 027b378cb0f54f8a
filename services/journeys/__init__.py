"""Journeys: graphs of steps people walk through, durably, on Temporal."""
