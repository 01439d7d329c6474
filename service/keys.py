"""API keys: the set the service accepts now, each with a name, and the keys file's format.

Every door asks one `KeyRing` which key a request sent (`name_of`). The name, never the key, is what
metrics and logs carry. A rotation replaces the ring's file keys in one reference change, so a request
checked mid-rotation sees either the old set or the new one, never a mix.

The keys file holds one key per line, `name:key` or a bare `key` (named `key<N>` by its line number
N); blank lines and lines starting with `#` are skipped.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_NAME = "default"  # the name of SIMPOOL_API_KEY
NO_KEY = "none"  # the label of a request that named no accepted key (or needed none)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True, slots=True)
class ParsedKeys:
    """A keys file's contents: the (name, key) pairs in file order, and one problem per skipped line
    (by line number: a problem never quotes the line, which may hold a key)."""

    keys: tuple[tuple[str, str], ...]
    problems: tuple[str, ...]


def parse_keys(text: str) -> ParsedKeys:
    """The keys of a keys file's text; lines that hold no usable key are skipped and reported."""
    keys: list[tuple[str, str]] = []
    problems: list[str] = []
    first_line: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, key = line.partition(":")
        if not sep:
            name, key = f"key{number}", line
        name, key = name.strip(), key.strip()
        problem = _problem(name, key, first_line.get(key))
        if problem is not None:
            problems.append(f"line {number}: {problem}")
            continue
        first_line[key] = number
        keys.append((name, key))
    return ParsedKeys(tuple(keys), tuple(problems))


def _problem(name: str, key: str, earlier: int | None) -> str | None:
    if not _NAME.fullmatch(name):
        return "the name before ':' must be letters, digits, '_', '.' or '-' (at most 64)"
    if name == NO_KEY:
        return f"the name {NO_KEY!r} is reserved (it labels requests without a key)"
    if not key:
        return "no key after the name"
    if any(c.isspace() for c in key):
        return "the key holds a space"
    if earlier is not None:
        return f"the same key as line {earlier}"
    return None


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyRing:
    """The accepted keys: `SIMPOOL_API_KEY` (named `default`) and the keys file's, whose set a rotation
    replaces. With neither configured, no key is `required` and every request passes."""

    def __init__(self, api_key: str | None = None, *, file_configured: bool = False) -> None:
        self._fixed = ((DEFAULT_NAME, _digest(api_key)),) if api_key is not None else ()
        self._entries = self._fixed
        self.required = api_key is not None or file_configured

    def replace_file_keys(self, keys: Iterable[tuple[str, str]]) -> None:
        """The keys file's new set, in place of the previous one (`SIMPOOL_API_KEY` stays)."""
        self._entries = self._fixed + tuple((name, _digest(key)) for name, key in keys)

    def names(self) -> list[str]:
        return sorted({name for name, _ in self._entries})

    def name_of(self, token: str) -> str | None:
        """The name of the key `token` is, or None. Every key is compared (in constant time, on their
        sha256), so the time taken says nothing about which key or how much of one matched."""
        given = _digest(token)
        found = None
        for name, digest in self._entries:  # one reference read: a rotation mid-loop changes nothing
            if hmac.compare_digest(given, digest) and found is None:
                found = name
        return found
