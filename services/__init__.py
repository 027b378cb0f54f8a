"""Campaign Express services: one package per domain, plus the host that runs them."""
