"""REST gateway: JSON/HTTP transcoding onto the gRPC services, and its OpenAPI document."""
