"""TokenStore protocol: who we are to the DockMon backend."""

from __future__ import annotations

import re
from typing import Literal

from messages.common import Secret
from messages.records import record

TokenKind = Literal["permanent", "registration"]

#: the backend's token grammar (settings, secret files and the token file)
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_:-]{1,255}")


@record(kw_only=True)
class GetToken:
    """``ask`` only: answered with :class:`TokenInfo`."""


@record(kw_only=True)
class TokenInfo:
    token: Secret
    kind: TokenKind
    source: str  # "PERMANENT_TOKEN", the token file path, or "REGISTRATION_TOKEN"


@record(kw_only=True)
class SaveToken:
    """Persist the permanent token the backend issued (atomic, mode 0600)."""

    token: Secret
