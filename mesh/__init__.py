"""Service-mesh configuration for Campaign Express.

`mesh.envoy` generates the Envoy bootstrap of the edge proxy (gRPC pass-through
plus REST/JSON transcoding) from the descriptor set in gen/. The generated file,
mesh/envoy/edge.yaml, is committed; tests/test_mesh.py checks it for drift.
"""
