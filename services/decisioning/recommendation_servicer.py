"""RecommendationService over gRPC: protos in, domain values out."""

from __future__ import annotations

from typing import Any

from campaignexpress.decisioning.v1 import recommendation_service_pb2 as pb
from campaignexpress.decisioning.v1 import recommendation_service_pb2_grpc as pb_grpc
from services.common.call import current_principal
from services.decisioning.recommendations import Recommendations

_STRATEGIES = {
    pb.STRATEGY_MOST_POPULAR: "most_popular",
    pb.STRATEGY_RECENTLY_VIEWED: "recently_viewed",
    pb.STRATEGY_FREQUENTLY_BOUGHT_TOGETHER: "frequently_bought_together",
    pb.STRATEGY_PERSONALIZED_CF: "personalized_cf",
    pb.STRATEGY_CONTENT_BASED: "content_based",
    pb.STRATEGY_TRENDING: "trending",
    pb.STRATEGY_NEW_ARRIVALS: "new_arrivals",
}


class RecommendationServicer(pb_grpc.RecommendationServiceServicer):
    def __init__(self, recommendations: Recommendations) -> None:
        self._r = recommendations

    async def Recommend(self, request: pb.RecommendRequest, context: Any) -> Any:
        answer = await self._r.recommend(
            current_principal(),
            request.catalog,
            _STRATEGIES.get(request.strategy, ""),
            request.user_id,
            request.limit,
            list(request.exclude_ids),
            request.item_id,
        )
        return pb.RecommendResponse(
            items=[pb.RecommendedItem(id=r.item_id, score=r.score, reason=r.reason)
                   for r in answer.items],
            catalog_items=answer.catalog_items,
        )  # fmt: skip
