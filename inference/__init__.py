"""CoLaNet inference: features, model, checkpoints, training, evaluation,
export, providers and the batcher (docs/inference.md).

Serving needs NumPy only; training, export and the `xla:*` providers need JAX
(the `ml` extra), imported only when used."""

from inference.batcher import InferenceBatcher
from inference.catalogue import CATALOGUE, PROVIDER_NAMES, ProviderSpec, availability
from inference.checkpoint import Checkpoint, CheckpointError, default_checkpoint, load_checkpoint
from inference.config import ModelConfig
from inference.features import (
    FEATURE_DIM,
    LAYOUT_VERSION,
    USER_DIM,
    BidContext,
    FeatureError,
    Loyalty,
    Profile,
    build_features,
    user_features,
)
from inference.numpy_model import NumpyColaNet, Scores
from inference.providers import Provider, ProviderError, ScoringRequest, create_provider

__all__ = [
    "CATALOGUE",
    "FEATURE_DIM",
    "LAYOUT_VERSION",
    "PROVIDER_NAMES",
    "USER_DIM",
    "BidContext",
    "Checkpoint",
    "CheckpointError",
    "FeatureError",
    "InferenceBatcher",
    "Loyalty",
    "ModelConfig",
    "NumpyColaNet",
    "Profile",
    "Provider",
    "ProviderError",
    "ProviderSpec",
    "Scores",
    "ScoringRequest",
    "availability",
    "build_features",
    "create_provider",
    "default_checkpoint",
    "load_checkpoint",
    "user_features",
]
