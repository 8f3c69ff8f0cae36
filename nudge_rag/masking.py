"""Secrets never leave the process: one masking for URLs, conninfo strings and any message.

:func:`mask_secrets` is the one function every output path goes through (``str`` / ``repr`` of a
state location, database labels, errors, warnings, the watch log, CLI output). It masks what it
can see, ``user:password@`` in any ``scheme://`` URL and ``password=...`` in a URL query or a libpq
``key=value`` string, and every password this process has met in a URL (:func:`remember_secrets`,
called where URLs enter), in whatever form a driver echoes it back (raw, with a bad ``%`` escape,
percent-decoded, re-encoded, quoted), and the value of ``PGPASSWORD``.

Example:
    .. code-block:: python

        mask_secrets("postgresql://app:S3CRET@db/app")          # 'postgresql://app:***@db/app'
        mask_secrets("postgresql://app@db/app?password=S3CRET")  # '...?password=***'
"""

from __future__ import annotations

import json
import os
import re
import threading
from urllib.parse import quote, unquote

__all__ = ["MASK", "mask_secrets", "remember_secrets"]

MASK = "***"

# user:password@ after scheme:// (the password up to the first @, as libpq reads it)
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:@/?#]*:)(?P<pw>[^\s@/]*)@")
# password=... in a URL query (up to & or #) or a libpq key=value string (a quoted value)
_PARAM = re.compile(
    r"(?P<head>\b(?:pg)?password\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'|[^\s&#'\"]*)", re.IGNORECASE
)
#: a secret this short is masked only where it stands apart (not inside a longer word)
_SHORT = 4

_known: set[str] = set()
_lock = threading.Lock()
_pattern: tuple[frozenset[str], re.Pattern[str] | None] = (frozenset(), None)


def _forms(secret: str) -> set[str]:
    """The ways a driver or a message may spell ``secret``."""
    plain = unquote(secret)
    out = {secret, plain, quote(plain, safe=""), quote(plain)}
    for s in (secret, plain):
        out.add(repr(s)[1:-1])
        out.add(json.dumps(s)[1:-1])
    if len(secret) >= 2 and secret[0] == secret[-1] == "'":  # a quoted conninfo value
        out |= _forms(secret[1:-1].replace("\\'", "'").replace("\\\\", "\\"))
    return {s for s in out if s and s != MASK}


def remember_secrets(text: str) -> None:
    """Remember the passwords ``text`` (a URL or a conninfo string) holds, so that
    :func:`mask_secrets` masks them wherever they turn up later (e.g. in a driver's message)."""
    found = [m.group("pw") for m in _USERINFO.finditer(text)]
    found += [m.group("pw") for m in _PARAM.finditer(text)]
    new: set[str] = set()
    for pw in found:
        if pw and pw != MASK:
            new |= _forms(pw)
    if new - _known:
        with _lock:
            _known.update(new)


def _secrets_pattern() -> re.Pattern[str] | None:
    """One regex for every secret known now (rebuilt when the set changes)."""
    global _pattern
    with _lock:
        secrets = set(_known)
    env = os.environ.get("PGPASSWORD")
    if env:
        secrets |= _forms(env)
    key = frozenset(secrets)
    if key == _pattern[0]:
        return _pattern[1]
    parts = []
    for s in sorted(secrets, key=len, reverse=True):  # longest first: no partial masks
        body = re.escape(s)
        parts.append(body if len(s) >= _SHORT else rf"(?<![A-Za-z0-9]){body}(?![A-Za-z0-9])")
    compiled = re.compile("|".join(parts)) if parts else None
    _pattern = (key, compiled)
    return compiled


def mask_secrets(text: str) -> str:
    """``text`` with every password masked as ``***``: in URLs (``user:pw@``, ``?password=``),
    in libpq ``password=`` settings, and every password met before or held in ``PGPASSWORD``."""
    if not text:
        return text
    remember_secrets(text)
    out = _USERINFO.sub(lambda m: f"{m.group('head')}{MASK}@", text)
    out = _PARAM.sub(lambda m: f"{m.group('head')}{MASK}" if m.group("pw") else m.group(0), out)
    pattern = _secrets_pattern()
    return pattern.sub(MASK, out) if pattern is not None else out
