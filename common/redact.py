"""The one redactor: passwords and tokens out of every URL and message that reaches a log, a ``repr`` or an error.

Used by the config, the frame sources, the queues, the store and the logs alike, so a secret hidden in one place
is hidden in all of them. Errs on the side of hiding, and never raises.

- :func:`redact_url` masks the user-info password of one URL (``redis://:pw@h`` -> ``redis://:***@h``; a
  user-info without ``:``, ``redis://pw@h``, which some clients read as a password, is replaced whole) and the
  values of query parameters that carry secrets (``?password=``, ``?token=``, ``?api_key=``...).
- :func:`redact_text` does the same to every URL inside free text (a driver's or a camera's error message),
  and replaces any extra secret strings it is given (a password that a library echoed without its URL).
- :func:`url_secrets` lists the secrets of a URL, as written and percent-decoded, for :func:`redact_text`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

__all__ = ["redact_text", "redact_url", "url_secrets"]

MASK = "***"
_URL_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")
_SECRET_KEY = r"(?:[a-z_]*pass(?:word)?|passwd|pwd|secret|[a-z_]*token|api_?key|access_?key|auth)"
_SECRET_QUERY = re.compile(rf"(?i)([?&;]{_SECRET_KEY}=)[^&;#\s]*")
_SECRET_KEY_ONLY = re.compile(rf"(?i){_SECRET_KEY}")


def redact_url(url: str) -> str:
    """``url`` with its password and secret query values replaced by ``***``; other strings come back unchanged.

    ``postgresql://user:pw@host/db`` -> ``postgresql://user:***@host/db``; ``rtsp://h/s?token=abc`` ->
    ``rtsp://h/s?token=***``. Everything up to the last ``@`` after the scheme counts as user-info.
    A non-string is returned as it is.
    """
    if not isinstance(url, str):
        return url
    scheme = _URL_SCHEME.match(url)
    start = scheme.end() if scheme else 0
    at = url.rfind("@", start)
    if at > start:
        user, colon, _ = url[start:at].partition(":")
        masked = f"{user}:{MASK}" if colon and "/" not in user else MASK
        url = url[:start] + masked + url[at:]
    return _SECRET_QUERY.sub(rf"\1{MASK}", url)


def url_secrets(url: str) -> list[str]:
    """The secrets inside ``url`` (user-info password, secret query values), as written and percent-decoded.

    Longest first, so that replacing them in order never leaves a tail of a longer one behind.
    """
    if not isinstance(url, str):
        return []
    found: list[str] = []
    scheme = _URL_SCHEME.match(url)
    start = scheme.end() if scheme else 0
    at = url.rfind("@", start)
    if at > start:
        user, colon, password = url[start:at].partition(":")
        found.append(password if colon else user)
    try:
        query = urlsplit(url).query
    except ValueError:
        query = url.partition("?")[2]
    for pair in re.split(r"[&;]", query):
        key, eq, value = pair.partition("=")
        if eq and _SECRET_KEY_ONLY.fullmatch(unquote(key)):
            found.append(value.partition("#")[0])
    return sorted({s for p in found for s in (p, unquote(p)) if s}, key=len, reverse=True)


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every URL inside it redacted (:func:`redact_url`) and each of ``secrets`` replaced by ``***``."""
    if not isinstance(text, str):
        return text
    text = _URL_IN_TEXT.sub(lambda m: redact_url(m.group()), text)
    for secret in sorted(set(secrets), key=len, reverse=True):
        if secret:
            text = text.replace(secret, MASK)
    return text
