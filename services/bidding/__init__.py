"""Real-time bidding: identity, consent, profiles, caps, candidates, auction."""
