"""Channel adapters: one module per provider kind, each sending an
`Outgoing` message with that provider's protocol or documented API."""
