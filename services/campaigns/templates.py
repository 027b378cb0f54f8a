"""Built-in campaign templates (notification-campaigns requirement R1.1)."""

from __future__ import annotations

from dataclasses import dataclass

from services.campaigns.model import (
    CampaignSpec,
    FrequencyCap,
    Schedule,
)


@dataclass(frozen=True, slots=True)
class Template:
    template_id: str
    display_name: str
    description: str
    spec: CampaignSpec


TEMPLATES: dict[str, Template] = {
    t.template_id: t
    for t in (
        Template(
            "welcome-series",
            "Welcome series",
            "Greets new customers over email and push during their first weeks; "
            "retention objective, even pacing, one message a day at most.",
            CampaignSpec(
                objective="RETENTION",
                channels=["EMAIL", "PUSH"],
                pacing_mode="EVEN",
                frequency_caps=[FrequencyCap(max_impressions=1, window="DAY")],
                labels={"template": "welcome-series"},
            ),
        ),
        Template(
            "re-engagement",
            "Re-engagement",
            "Wins back lapsed customers with display and email offers; engagement "
            "objective, two contacts a day at most.",
            CampaignSpec(
                objective="ENGAGEMENT",
                channels=["DISPLAY", "EMAIL"],
                pacing_mode="EVEN",
                frequency_caps=[FrequencyCap(max_impressions=2, window="DAY")],
                labels={"template": "re-engagement"},
            ),
        ),
        Template(
            "promotional",
            "Promotional",
            "Short sale or launch push on display, video and native; conversions "
            "objective, spends as fast as opportunities come.",
            CampaignSpec(
                objective="CONVERSIONS",
                channels=["DISPLAY", "VIDEO", "NATIVE"],
                pacing_mode="ASAP",
                frequency_caps=[FrequencyCap(max_impressions=3, window="HOUR")],
                labels={"template": "promotional"},
                schedule=Schedule(),
            ),
        ),
    )
}
