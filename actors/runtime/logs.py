"""Logging: one redacting handler on stderr, JSON lines or coloured text, and secret redaction.

``setup_logging`` points the root logger at one handler; ``register_secret`` makes that handler
print a secret as ``****`` wherever it appears (message, arguments, traceback, ``fields``). It
sits low (it imports nothing of the agent) so that any actor may register a secret: TokenStore
registers every token it reads or is given, the configuration every token and proxy password.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections.abc import Mapping
from typing import TextIO

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def parse_level(text: str) -> str:
    """A ``LOG_LEVEL`` (debug|info|warn|warning|error, any case) as its name; else ValueError."""
    level = "warning" if text.lower() == "warn" else text.lower()
    if level not in _LEVELS:
        raise ValueError(f"invalid level {text!r} (use debug, info, warning or error)")
    return level


_HUMAN_FORMAT = (
    "%(asctime)s %(log_color)s%(levelname)-8s%(reset)s [%(threadName)s] %(name)s: %(message)s"
)
_SECRET_KEY = r"[\w-]*(?:token|password)"
_PLAIN = logging.Formatter()


class _Redactor(logging.Filter):
    """Handler filter masking registered secrets and JSON ``"…token"``/``"…password"`` values.

    It rewrites the record (message, traceback, stack, ``fields``) before any formatter runs.
    """

    _KEY = re.compile(_SECRET_KEY, re.IGNORECASE)
    _JSON_PAIR = re.compile(rf'("{_SECRET_KEY}"\s*:\s*")(?:[^"\\]|\\.)*"', re.IGNORECASE)

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None

    def register(self, value: str) -> None:
        with self._lock:
            self._secrets.add(value)
            longest_first = sorted(self._secrets, key=len, reverse=True)
            self._pattern = re.compile("|".join(map(re.escape, longest_first)))

    def redact(self, text: str) -> str:
        text = self._JSON_PAIR.sub(r'\1****"', text)
        pattern = self._pattern
        return pattern.sub("****", text) if pattern else text

    def _scrub(self, value: object) -> object:
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, Mapping):
            return {
                k: "****" if self._KEY.fullmatch(str(k)) else self._scrub(v)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self._scrub(v) for v in value]
        return value

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # bad %-args: log them instead of raising in the caller
            message = f"unformattable log message {record.msg!r} % {record.args!r}"
        record.msg, record.args = self.redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = _PLAIN.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            record.fields = self._scrub(fields)
        return True


_REDACTOR = _Redactor()


def register_secret(value: str) -> None:
    """Make every log handler set up by ``setup_logging`` print ``value`` as ``****``."""
    if value:
        _REDACTOR.register(value)


class _JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, thread, message, [exc], [stack], fields."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        entry: dict[str, object] = {
            "time": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "thread": record.threadName,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            for key, value in fields.items():
                entry.setdefault(str(key), value)
        return json.dumps(entry, ensure_ascii=False, default=str)


def _colored(stream: TextIO) -> logging.Formatter:
    """Text lines (coloured on a terminal); colorlog loads only for them (JSON is the default)."""
    import colorlog

    return colorlog.ColoredFormatter(_HUMAN_FORMAT, stream=stream)


def setup_logging(level: str, json_format: bool | None, stream: TextIO | None = None) -> None:
    """Point the root logger at one redacting handler on ``stream`` (default stderr).

    ``json_format`` None: coloured text when ``stream`` is a terminal, JSON lines otherwise.

    ``level`` is debug|info|warn|warning|error. pykka, websocket and urllib3 log at WARNING (or
    ``level`` if higher), except at debug, where pykka logs INFO and the others DEBUG.
    """
    name = parse_level(level)
    stream = sys.stderr if stream is None else stream
    if json_format is None:
        isatty = getattr(stream, "isatty", None)
        json_format = not (callable(isatty) and isatty())
    handler = logging.StreamHandler(stream)
    handler.addFilter(_REDACTOR)
    handler.setFormatter(_JsonFormatter() if json_format else _colored(stream))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS[name])
    debug = name == "debug"
    quiet = max(logging.WARNING, _LEVELS[name])
    logging.getLogger("pykka").setLevel(logging.INFO if debug else quiet)
    for noisy in ("websocket", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else quiet)
