"""The service host: builds the gRPC server, the in-process channel, the
gateway and the backends from one Settings, and runs them."""
