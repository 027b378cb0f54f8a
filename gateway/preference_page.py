"""The preference center as a page for people (`/preferences/{token}`, the
link in every message): the person's subscription groups as checkboxes in
a form that posts back to the same address. Behind it are the JSON calls
`GET`/`POST /v1/preferences/{token}` (MessagingService.GetPreferences and
UpdatePreferences). The token in the address is the only credential, so
the page is never cached, never framed, and sends no referrer."""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from typing import Any

#: Response headers of every page (the token is in its address).
HEADERS = {
    "Cache-Control": "no-store, private",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
    ),
}
#: A form field per group: `shown` lists every group on the page, `group`
#: the checked ones (an unchecked box sends nothing).
SHOWN, CHECKED = "shown", "group"

_STYLE = (
    "body{font:16px/1.5 system-ui,sans-serif;max-width:36rem;margin:2rem auto;padding:0 1rem;"
    "color:#1d1d1f}label{display:flex;gap:.75rem;padding:.75rem 0;border-bottom:1px solid #ddd}"
    "small{display:block;color:#666}button{margin-top:1.25rem;padding:.5rem 1.25rem;"
    "font:inherit}.note{padding:.5rem .75rem;background:#eef7ee;border-radius:.25rem}"
    ".error{background:#fbeaea}"
)


def page(choices: Iterable[Mapping[str, Any]], *, note: str = "", error: bool = False) -> str:
    """The page: each group (`group`, `displayName`, `description`,
    `subscribed`, as the JSON call answers) with its checkbox."""
    rows = []
    for choice in choices:
        group = html.escape(str(choice.get("group", "")), quote=True)
        name = html.escape(str(choice.get("displayName", "") or choice.get("group", "")))
        description = html.escape(str(choice.get("description", "")))
        checked = " checked" if choice.get("subscribed") else ""
        rows.append(
            f'<input type="hidden" name="{SHOWN}" value="{group}">'
            f'<label><input type="checkbox" name="{CHECKED}" value="{group}"{checked}>'
            f"<span>{name}<small>{description}</small></span></label>"
        )
    body = "".join(rows) or "<p>There is nothing to subscribe to.</p>"
    banner = ""
    if note:
        kind = "note error" if error else "note"
        banner = f'<p class="{kind}" role="status">{html.escape(note)}</p>'
    button = '<button type="submit">Save</button>' if rows else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Your email preferences</title><style>{_STYLE}</style></head><body>"
        f"<h1>Your email preferences</h1>{banner}"
        f'<form method="post">{body}{button}</form></body></html>'
    )


def choices_from_form(form: Mapping[str, list[str]]) -> list[dict[str, Any]]:
    """The choices a posted form makes: every group shown, subscribed when
    its box was checked."""
    checked = set(form.get(CHECKED, []))
    shown = list(dict.fromkeys(form.get(SHOWN, [])))
    return [{"group": group, "subscribed": group in checked} for group in shown]
