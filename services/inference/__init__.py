"""InferenceService: CoLaNet scoring served over gRPC (see docs/inference.md)."""
