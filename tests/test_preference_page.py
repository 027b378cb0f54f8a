"""The preference center's page: what people type into group names cannot
become markup, and a posted form says every shown group's choice."""

from __future__ import annotations

from gateway import preference_page


def test_names_are_escaped() -> None:
    page = preference_page.page([{
        "group": 'tenants/a/subscriptionGroups/"x', "displayName": "<script>alert(1)</script>",
        "description": "Tom & Jerry", "subscribed": True}])  # fmt: skip
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "Tom &amp; Jerry" in page
    assert 'value="tenants/a/subscriptionGroups/&quot;x" checked' in page
    assert "nothing to subscribe" in preference_page.page([])


def test_a_posted_form_gives_every_shown_group() -> None:
    form = {"shown": ["g/a", "g/b", "g/a"], "group": ["g/b", "g/elsewhere"]}
    assert preference_page.choices_from_form(form) == [
        {"group": "g/a", "subscribed": False}, {"group": "g/b", "subscribed": True}
    ]  # fmt: skip
