"""TokenStore: the only code that reads or writes ``$DATA_PATH/permanent_token``.

The token file is read defensively (:func:`inspect_token_file`): opened without following a
symlink and without blocking (a FIFO cannot hang startup), it must be a regular file of at most
:data:`TOKEN_FILE_LIMIT` bytes whose trimmed content matches the server's token grammar
(letters, digits, ``_``, ``:``, ``-``; at most 255). Anything else is a :class:`TokenFileError`
naming the path and the fix, never a silent fallback to another identity. A file readable by
others (e.g. 0644) is repaired to 0600 with a warning.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path
from typing import Any, TypeAlias, assert_never

from actors.base import ActorContext, SupervisedActor
from actors.errors import ConfigError, FatalError
from actors.runtime.fsio import write_atomic
from actors.runtime.logs import register_secret
from messages.common import Secret
from messages.records import record
from messages.tokens import TOKEN_PATTERN, GetToken, SaveToken, TokenInfo

log = logging.getLogger(__name__)

#: every message this actor accepts (besides Ping); anything else is logged and dropped
Inbox: TypeAlias = GetToken | SaveToken

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


#: a token file holds one token of at most 255 characters (and a newline or so)
TOKEN_FILE_LIMIT = 4096
_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class TokenFileError(FatalError):
    """The token file exists but cannot be used; the message names the path and the fix."""


@record
class TokenFile:
    exists: bool
    token: Secret | None = None  # None: missing or empty
    mode: int | None = None  # as found (before any repair)


def _delete_hint(path: Path) -> str:
    return (
        f"delete {path} and set REGISTRATION_TOKEN to register again (the agent writes the "
        "file itself after registering)"
    )


def inspect_token_file(data_path: str, *, repair: bool) -> TokenFile:
    """What ``$DATA_PATH/permanent_token`` holds, read safely; raises TokenFileError.

    ``repair``: tighten a mode readable by others to 0600 (with a warning); off for checks
    that must change nothing (``dockmon-agent doctor``).
    """
    path = Path(data_path) / TOKEN_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return TokenFile(exists=False)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise TokenFileError(
                f"{path} is a symbolic link; the agent never follows it (it would send another "
                f"file's content as its token). Replace it with the token file itself, or "
                f"{_delete_hint(path)}"
            ) from None
        raise TokenFileError(
            f"cannot read {path}: {exc.strerror or exc}; make it readable by the agent's user "
            f"(uid {os.getuid()}), or {_delete_hint(path)}"
        ) from None
    try:
        st = os.fstat(fd)
        kind = next((name for test, name in _KINDS if test(st.st_mode)), None)
        if kind is not None or not stat.S_ISREG(st.st_mode):
            raise TokenFileError(
                f"{path} is {kind or 'not a regular file'}, not a token file; {_delete_hint(path)}"
            )
        if st.st_size > TOKEN_FILE_LIMIT:
            raise TokenFileError(
                f"{path} is {st.st_size} bytes; a token file holds one token of at most 255 "
                f"characters. Write the permanent token into it, or {_delete_hint(path)}"
            )
        chunks: list[bytes] = []
        size = 0
        while size <= TOKEN_FILE_LIMIT and (chunk := os.read(fd, TOKEN_FILE_LIMIT + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
        if size > TOKEN_FILE_LIMIT:
            raise TokenFileError(
                f"{path} holds more than {TOKEN_FILE_LIMIT} bytes; {_delete_hint(path)}"
            )
        mode = stat.S_IMODE(st.st_mode)
        if repair and mode & 0o077:
            try:
                os.fchmod(fd, 0o600)
            except OSError as exc:
                log.warning(
                    "%s has mode %04o (readable by others) and cannot be set to 0600: %s; "
                    "chmod 600 it",
                    path,
                    mode,
                    exc.strerror or exc,
                )
            else:
                log.warning("%s had mode %04o (readable by others); set it to 0600", path, mode)
    except OSError as exc:
        raise TokenFileError(
            f"cannot read {path}: {exc.strerror or exc}; {_delete_hint(path)}"
        ) from None
    finally:
        os.close(fd)
    try:
        text = b"".join(chunks).decode("utf-8").strip()
    except UnicodeDecodeError:
        text = None
    if text == "":
        return TokenFile(exists=True, mode=mode)
    if text is None or not TOKEN_PATTERN.fullmatch(text):
        where = (
            " (a line break inside the token)" if text and any(c in text for c in "\r\n") else ""
        )
        raise TokenFileError(
            f"{path} does not hold a valid token{where}: the server issues only letters, "
            f"digits, '_', ':' and '-', at most 255 characters. Write the permanent token "
            f"into it alone, or {_delete_hint(path)}"
        )
    return TokenFile(exists=True, token=Secret(text), mode=mode)


def read_token_file(data_path: str) -> Secret | None:
    """The saved permanent token (None if there is none); raises TokenFileError."""
    return inspect_token_file(data_path, repair=True).token


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

    def handle(self, message: object) -> Any:
        if not isinstance(message, Inbox):
            log.warning("TokenStore ignored %s", type(message).__name__)
            return None
        match message:
            case GetToken():
                return self._current
            case SaveToken(token=token):
                self._save(token)
            case _:
                assert_never(message)
        return None

    def _save(self, token: Secret) -> None:
        register_secret(token.reveal())
        path = Path(self._data_path) / TOKEN_FILE
        try:
            saved = read_token_file(self._data_path)
        except TokenFileError:
            saved = None  # whatever is there is replaced (a rename never follows a symlink)
        if saved != token:
            write_token_atomic(self._data_path, token)
            log.info("saved the permanent token to %s", path)
        self._current = TokenInfo(token=token, kind="permanent", source=str(path))
