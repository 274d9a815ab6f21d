"""TokenStore: the only code that reads or writes ``$DATA_PATH/permanent_token``."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from actors.base import ActorContext, SupervisedActor
from actors.errors import ConfigError, FatalError
from actors.fsio import write_atomic
from agent_config import register_secret
from messages.common import Secret
from messages.tokens import GetToken, SaveToken, TokenInfo

log = logging.getLogger(__name__)

TOKEN_FILE = "permanent_token"


def check_data_dir(data_path: str) -> None:
    """Fail clearly unless ``data_path`` is a directory we can create files in."""
    path = Path(data_path)
    if not path.exists():
        try:
            path.mkdir(parents=True, mode=0o700)
        except OSError as exc:
            raise FatalError(
                f"DATA_PATH {data_path} does not exist and cannot be created: {exc.strerror}; "
                "mount a writable volume there (e.g. -v dockmon-agent-data:/data)"
            ) from exc
    if not path.is_dir():
        raise FatalError(f"DATA_PATH {data_path} is not a directory")
    probe = path / f".write-test-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)
        probe.unlink()
    except OSError as exc:
        raise FatalError(
            f"DATA_PATH {data_path} is not writable ({exc.strerror}); the agent keeps its "
            "permanent token there. Make it writable by the agent's user, or mount a volume"
        ) from exc


def read_token_file(data_path: str) -> Secret | None:
    path = Path(data_path) / TOKEN_FILE
    try:
        value = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        log.error("cannot read %s: %s; ignoring it", path, exc)
        return None
    return Secret(value) if value else None


def resolve_token(
    data_path: str, permanent_env: Secret | None, registration: Secret | None
) -> TokenInfo:
    """PROTOCOL §2.1 precedence: PERMANENT_TOKEN, then the token file, then REGISTRATION_TOKEN."""
    if permanent_env:
        return TokenInfo(token=permanent_env, kind="permanent", source="PERMANENT_TOKEN")
    saved = read_token_file(data_path)
    if saved:
        return TokenInfo(token=saved, kind="permanent", source=str(Path(data_path) / TOKEN_FILE))
    if registration:
        return TokenInfo(token=registration, kind="registration", source="REGISTRATION_TOKEN")
    raise ConfigError(
        f"no token: set REGISTRATION_TOKEN (from DockMon: Hosts -> Add agent) for the first run; "
        f"afterwards the permanent token is kept in {Path(data_path) / TOKEN_FILE}"
    )


def write_token_atomic(data_path: str, token: Secret) -> None:
    """The raw token, without newline, mode 0600, by the one atomic-write rule (fsio)."""
    target = Path(data_path) / TOKEN_FILE
    try:
        write_atomic(target, token.reveal().encode(), mode=0o600)
    except OSError as exc:
        raise FatalError(
            f"cannot save the permanent token to {target}: {exc.strerror or exc}; the previous "
            "file is untouched. The agent stops rather than run with an identity it cannot keep"
        ) from exc


class TokenStoreActor(SupervisedActor):
    def __init__(
        self,
        ctx: ActorContext,
        *,
        data_path: str,
        permanent_token: Secret | None,
        registration_token: Secret | None,
    ) -> None:
        super().__init__(ctx)
        self._data_path = data_path
        self._env_permanent = permanent_token
        self._registration = registration_token
        self._current: TokenInfo | None = None

    def on_start(self) -> None:
        check_data_dir(self._data_path)
        self._current = resolve_token(self._data_path, self._env_permanent, self._registration)
        register_secret(self._current.token.reveal())
        log.info("using %s token from %s", self._current.kind, self._current.source)

    def handle(self, message: Any) -> Any:
        match message:
            case GetToken():
                return self._current
            case SaveToken(token=token):
                self._save(token)
            case _:
                log.warning("TokenStore ignored %s", type(message).__name__)
        return None

    def _save(self, token: Secret) -> None:
        register_secret(token.reveal())
        path = Path(self._data_path) / TOKEN_FILE
        if read_token_file(self._data_path) != token:
            write_token_atomic(self._data_path, token)
            log.info("saved the permanent token to %s", path)
        self._current = TokenInfo(token=token, kind="permanent", source=str(path))
