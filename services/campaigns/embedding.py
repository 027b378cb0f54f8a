"""The offer embedding the scorer uses to tell offers apart.

An offer may carry its own embedding (from a creative-understanding model);
otherwise `derive_embedding` builds one from its attributes by signed feature
hashing: each token (`format:BANNER`, `cat:IAB1`, `domain:shoes.example`,
`attr:3`, `size:300x250`) adds +1 or -1 to one of the dimensions, chosen by a
stable hash (BLAKE2b) of the token; the vector is then L2-normalised. Offers
sharing attributes get similar embeddings; the same offer always gets the same
one, in every process and release.
"""

from __future__ import annotations

import hashlib
import math

from services.campaigns.model import OfferSpec

OFFER_EMBEDDING_DIM = 16


def _tokens(spec: OfferSpec) -> list[str]:
    tokens = [f"format:{spec.format}"]
    tokens += [f"cat:{c}" for c in spec.iab_categories]
    tokens += [f"domain:{d.lower()}" for d in spec.advertiser_domains]
    tokens += [f"attr:{a}" for a in spec.attributes]
    tokens += [f"size:{s.width}x{s.height}" for s in spec.sizes]
    return tokens


def derive_embedding(spec: OfferSpec, dim: int = OFFER_EMBEDDING_DIM) -> list[float]:
    vector = [0.0] * dim
    for token in _tokens(spec):
        digest = hashlib.blake2b(token.encode(), digest_size=8).digest()
        index = int.from_bytes(digest[:4], "little") % dim
        sign = 1.0 if digest[4] & 1 else -1.0
        vector[index] += sign
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm else vector


def offer_embedding(spec: OfferSpec, dim: int = OFFER_EMBEDDING_DIM) -> list[float]:
    """The offer's own embedding when it has one of the right size, else the
    derived one."""
    if len(spec.embedding) == dim:
        return list(spec.embedding)
    return derive_embedding(spec, dim)
