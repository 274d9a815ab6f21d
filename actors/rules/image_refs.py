"""Image references the agent is configured with, parsed into name, tag and digest.

``SELF_UPDATE_IMAGE`` is checked by the configuration at startup and parsed again by the
self-update flow (``actors/flows/self_update.py``) when it pulls it; both use this one parser,
on the one grammar (``messages.references.IMAGE_REFERENCE``) the decoders use for server-sent
images too.
"""

from __future__ import annotations

import re

from messages.records import record
from messages.references import IMAGE_REFERENCE

_REFERENCE = IMAGE_REFERENCE  # the one grammar the decoders use for server-sent images too


@record
class ImageRef:
    """``name[:tag][@sha256:digest]``, Docker's reference grammar (sha256 digests only)."""

    name: str
    tag: str | None
    digest: str | None

    def __str__(self) -> str:
        tag = f":{self.tag}" if self.tag else ""
        digest = f"@{self.digest}" if self.digest else ""
        return f"{self.name}{tag}{digest}"

    @property
    def pull_tag(self) -> str:
        """What Docker's pull API takes as ``tag``: the digest if pinned, else the tag."""
        return self.digest or self.tag or "latest"


def parse_image_ref(text: str) -> ImageRef:
    """Parse an image reference; ``ValueError`` says what is wrong."""
    match = _REFERENCE.fullmatch(text.strip())
    if match is None:
        if "@" in text and not re.search(r"@sha256:[0-9a-f]{64}$", text):
            raise ValueError(f"invalid image reference {text!r} (a digest must be sha256:<64 hex>)")
        raise ValueError(
            f"invalid image reference {text!r} (expected e.g. registry.example.com/agent:1.2 "
            "or registry.example.com/agent@sha256:<digest>)"
        )
    return ImageRef(match["name"], match["tag"], match["digest"])
