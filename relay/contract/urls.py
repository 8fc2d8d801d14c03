"""Repository URLs without credentials: the runner's and the webhooks' git fields, which
Datadog shows, never carry a token a clone URL may hold."""

from __future__ import annotations

import re

# scheme://authority rest: the authority ends at the first "/", "?" or "#".
_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)([^/?#]*)(.*)", re.DOTALL)


def strip_credentials(url: str) -> str:
    """``url`` without user, password, query and fragment; an scp-like ``git@host:p`` as is.

    The user part ends at the authority's last ``@``, so an ``@`` in the path survives, and a
    URL that does not parse keeps no credentials either: nothing here needs it to parse.
    """
    match = _URL.fullmatch(url)
    if match is None:
        return url
    scheme, authority, rest = match.groups()
    host = authority.rpartition("@")[2]
    path = re.split(r"[?#]", rest, maxsplit=1)[0]
    return scheme + host + ("" if path == "/" else path)
