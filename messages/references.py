"""Docker references that come from the server, validated once where they enter (PROTOCOL §12).

docker-py leaves ``/`` unescaped in API paths and dockerd follows the cleaned path, so a container
"id" such as ``../images/nginx:1`` turns ``DELETE /containers/{id}`` into ``DELETE /images/…``.
Every container, image, network, volume and shell-session reference the backend sends is
therefore checked against Docker's own grammar before any actor sees it.

A message field holding such a value is typed with one of the ``Annotated`` aliases below
(``ContainerRef``, ``ImageRef``, ...). :func:`problem` walks a decoded message, nested messages
included, and checks every such field; ``messages.wire`` calls it on everything it decodes, so a
new command family gets the check by typing its fields, and ``tests/test_references.py`` fails
for a reference-like field that is left as a plain ``str``.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import typing
from typing import Annotated, Any

from messages.records import record


class BadReference(ValueError):
    """A reference breaks Docker's grammar; the message is the whole reply text."""


@record
class Grammar:
    """One kind of reference: its name in errors, its pattern and its length limit."""

    kind: str  # "container reference", "image reference", "container name", ...
    pattern: re.Pattern[str]
    expected: str  # what a valid value looks like, for the error text
    max_length: int = 255
    allow_empty: bool = False

    def check(self, value: str, field: str = "") -> str:
        """``value`` if it is valid, else :class:`BadReference` (``invalid <kind>: …``)."""
        if value == "" and self.allow_empty:
            return value
        if len(value) <= self.max_length and self.pattern.fullmatch(value):
            return value
        shown = value if len(value) <= 80 else value[:77] + "..."
        what = f"{field} must be {self.expected}" if field else f"expected {self.expected}"
        too_long = f", at most {self.max_length} characters" if len(value) > self.max_length else ""
        raise BadReference(f"invalid {self.kind}: {shown!r} ({what}{too_long})")


# --- the grammars ------------------------------------------------------------------------------

#: Docker's restricted names (moby ``daemon/names``): containers (and, here, networks)
_NAME = r"[a-zA-Z0-9][a-zA-Z0-9_.-]*"

# the distribution reference grammar (github.com/distribution/reference), sha256 digests only
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])"
_REPOSITORY = rf"(?:{_HOST}(?::[0-9]+)?/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"sha256:[0-9a-f]{64}"
#: ``name[:tag][@sha256:<64 hex>]`` with the groups ``name``, ``tag`` and ``digest``
IMAGE_REFERENCE = re.compile(
    rf"(?P<name>{_REPOSITORY})(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?", re.ASCII
)
#: an image id: ``sha256:<hex>`` or a hex prefix (the reference grammar above also covers both)
_IMAGE_ID = r"(?:sha256:)?[0-9a-f]{1,64}"

CONTAINER = Grammar(
    "container reference",
    re.compile(rf"/?{_NAME}", re.ASCII),
    "a container name or (prefix of a) hex id",
)
CONTAINER_NAME = Grammar(
    "container name",
    re.compile(r"/?[a-zA-Z0-9][a-zA-Z0-9_.-]+", re.ASCII),
    "a name of 2 or more of [a-zA-Z0-9_.-], starting with a letter or digit",
)
IMAGE = Grammar(
    "image reference",
    re.compile(rf"{_IMAGE_ID}|{IMAGE_REFERENCE.pattern}", re.ASCII),
    "an image id or a reference such as registry.example.com:5000/team/app:1.2[@sha256:<hex>]",
)
#: ``self_update.image``: the agent ignores it (PROTOCOL §7.2), but it is still checked if sent
OPTIONAL_IMAGE = dataclasses.replace(IMAGE, allow_empty=True)
NETWORK = Grammar(
    "network reference",
    re.compile(_NAME, re.ASCII),
    "a network name or (prefix of a) hex id",
)
NETWORK_NAME = Grammar(
    "network name",
    re.compile(_NAME, re.ASCII),
    "a name of [a-zA-Z0-9_.-], starting with a letter or digit",
)
VOLUME = Grammar(
    "volume reference",
    re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+", re.ASCII),
    "a volume name of 2 or more of [a-zA-Z0-9_.-], starting with a letter or digit",
)
#: shell ``session_id``s (UUIDs in practice): never sent to Docker, but echoed and logged
SESSION = Grammar(
    "session reference",
    re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*", re.ASCII),
    "a session id of [A-Za-z0-9_.:-]",
    max_length=128,
)

ContainerRef = Annotated[str, CONTAINER]
ContainerName = Annotated[str, CONTAINER_NAME]
ImageRef = Annotated[str, IMAGE]
OptionalImageRef = Annotated[str, OPTIONAL_IMAGE]
NetworkRef = Annotated[str, NETWORK]
NetworkName = Annotated[str, NETWORK_NAME]
VolumeRef = Annotated[str, VOLUME]
SessionRef = Annotated[str, SESSION]

#: the length of Docker's short ids (``docker ps``, a container's hostname and network alias)
SHORT_ID_LENGTH = 12


def short_id(docker_id: str) -> str:
    """The first 12 hex characters of a Docker ID, without any ``sha256:`` prefix."""
    return docker_id.removeprefix("sha256:")[:SHORT_ID_LENGTH]


# --- checking decoded messages -----------------------------------------------------------------


@functools.cache
def reference_fields(cls: type) -> tuple[tuple[str, Grammar], ...]:
    """The fields of the message class ``cls`` typed as a reference, with their grammar."""
    return _plan(cls)[0]


def _dataclasses_in(hint: Any) -> set[type]:
    found: set[type] = set()
    todo = [hint]
    while todo:
        item = todo.pop()
        if isinstance(item, type) and dataclasses.is_dataclass(item):
            found.add(item)
        todo.extend(typing.get_args(item))
    return found


@functools.cache
def _plan(cls: type) -> tuple[tuple[tuple[str, Grammar], ...], tuple[str, ...]]:
    """(reference fields, fields that may hold messages with references) of ``cls``."""
    if not dataclasses.is_dataclass(cls):
        return (), ()
    hints = typing.get_type_hints(cls, include_extras=True)
    refs: list[tuple[str, Grammar]] = []
    nested: list[str] = []
    for f in dataclasses.fields(cls):
        hint = hints.get(f.name)
        grammars = [x for x in getattr(hint, "__metadata__", ()) if isinstance(x, Grammar)]
        if grammars:
            refs.append((f.name, grammars[0]))
        elif any(c is not cls and _carries_references(c) for c in _dataclasses_in(hint)):
            nested.append(f.name)
    return tuple(refs), tuple(nested)


@functools.cache
def _carries_references(cls: type) -> bool:
    refs, nested = _plan(cls)
    return bool(refs or nested)


def problem(message: Any) -> str | None:
    """Why a decoded message carries an invalid reference (``invalid <kind>: …``), or None.

    Nested messages (a field holding a message, or a tuple of them) are checked too.
    """
    if not dataclasses.is_dataclass(message) or isinstance(message, type):
        return None
    refs, nested = _plan(type(message))
    for name, grammar in refs:
        value = getattr(message, name)
        if not isinstance(value, str):
            return f"invalid {grammar.kind}: {name} must be a string"
        try:
            grammar.check(value, name)
        except BadReference as exc:
            return str(exc)
    for name in nested:
        value = getattr(message, name)
        for item in value if isinstance(value, tuple) else (value,):
            if found := problem(item):
                return found
    return None
