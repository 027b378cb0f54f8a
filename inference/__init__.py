"""CoLaNet inference: model, training, export, providers, batcher (see its issue)."""
