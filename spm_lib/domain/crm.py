"""The CRM's deal page: the address template of `config/crm.yml` (`deal_url`) checked once and filled per deal.

A template is an http(s) URL with a fixed host holding `{opportunity_id}` (e.g.
`https://crm.example.com/opp/{opportunity_id}`) and no other `{…}`. The id is URL-quoted into it (every character
but letters, digits and `_.-~` is %-escaped, `/` included), so a CRM id can never change the host, the path
above it or add a query of its own.
"""

from __future__ import annotations

from urllib.parse import quote, urlsplit

PLACEHOLDER = "{opportunity_id}"
SCHEMES = ("http", "https")

__all__ = ["PLACEHOLDER", "SCHEMES", "check_deal_url", "fill_deal_url"]


def check_deal_url(template: str) -> str:
    """`template` when it is a usable deal-page template; ValueError saying what to change otherwise."""
    example = "e.g. https://crm.example.com/opp/{opportunity_id}"
    if PLACEHOLDER not in template:
        raise ValueError(f"{template!r} lacks the placeholder {PLACEHOLDER}, where each deal's id goes; {example}")
    rest = template.replace(PLACEHOLDER, "")
    if "{" in rest or "}" in rest:
        raise ValueError(f"{template!r}: the only placeholder allowed is {PLACEHOLDER} (and no other braces); "
                         f"{example}")
    if any(c.isspace() or ord(c) < 32 for c in template):
        raise ValueError(f"{template!r} holds white space or a control character: write it as one URL; {example}")
    parts = urlsplit(template.replace(PLACEHOLDER, "ID"))
    if parts.scheme.lower() not in SCHEMES:
        found = f"not {parts.scheme}:" if parts.scheme else "it has no scheme"
        raise ValueError(f"{template!r}: the address must start with http:// or https://, {found}; {example}")
    host = urlsplit(template).netloc
    if not parts.netloc or PLACEHOLDER in host or "@" in host:
        raise ValueError(f"{template!r}: the host must be written out (no placeholder or user@ in it); {example}")
    return template


def fill_deal_url(template: str, opportunity_id: object) -> str:
    """The deal page of `opportunity_id`: `template` (checked by check_deal_url) with the id URL-quoted into it."""
    return template.replace(PLACEHOLDER, quote(str(opportunity_id), safe=""))
