"""compose protocol messages (filled in by the family's issue)."""

from __future__ import annotations

from typing import Any

from messages.decoding import CommandDecoder

#: generic ``command`` names this family decodes
GENERIC_DECODERS: dict[str, CommandDecoder] = {}
#: top-level frame ``type``s this family decodes (frame -> typed message or None to ignore)
FRAME_DECODERS: dict[str, Any] = {}
#: which actor role runs each command type
ROUTES: dict[type, str] = {}
