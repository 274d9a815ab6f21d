"""Tests for actors/runtime/logs.py: JSON and text formats, redaction, logger levels."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from actors.runtime.logs import register_secret, setup_logging


class logging_to:
    """Run ``setup_logging`` and restore the previous logging state afterwards."""

    _NAMES = ("", "pykka", "websocket", "urllib3")

    def __init__(self, stream: io.StringIO, *, json_format: bool, level: str = "info") -> None:
        self.args = (level, json_format, stream)

    def __enter__(self) -> None:
        self.saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in self._NAMES]
        self.handlers = logging.getLogger().handlers[:]
        setup_logging(*self.args)

    def __exit__(self, *exc: object) -> None:
        for logger, level in self.saved:
            logger.setLevel(level)
        logging.getLogger().handlers[:] = self.handlers


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    with logging_to(stream, json_format=True):
        yield stream


def records(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_logging_one_object_per_line(json_log: io.StringIO) -> None:
    log = logging.getLogger("agent.test")
    log.info("hello %s", "world", extra={"fields": {"container": "web", "count": 3}})
    log.debug("not shown")
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        log.exception("failed")
    first, second = records(json_log)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(first["time"]))
    assert {k: v for k, v in first.items() if k != "time"} == {
        "level": "info",
        "logger": "agent.test",
        "thread": "MainThread",
        "message": "hello world",
        "container": "web",
        "count": 3,
    }
    assert second["level"] == "error"
    assert "Traceback" in str(second["exc"])
    assert "RuntimeError: boom" in str(second["exc"])


def test_json_logging_redacts_secrets(json_log: io.StringIO) -> None:
    register_secret("s3cr3t-value-42")
    log = logging.getLogger("agent.test")
    log.warning("token is %s", "s3cr3t-value-42", extra={"fields": {"tok": "s3cr3t-value-42"}})
    log.info('sent {"type": "register", "token": "abc", "permanent_token":"def"}')
    log.info("login", extra={"fields": {"password": "pw", "nested": {"auth_token": "x"}}})
    try:
        raise ValueError("bad secret s3cr3t-value-42")
    except ValueError:
        log.exception("oops")
    out = json_log.getvalue()
    assert "s3cr3t-value-42" not in out
    first, second, third, fourth = records(json_log)
    assert (first["message"], first["tok"]) == ("token is ****", "****")
    assert (
        second["message"] == 'sent {"type": "register", "token": "****", "permanent_token":"****"}'
    )
    assert (third["password"], third["nested"]) == ("****", {"auth_token": "****"})
    assert "ValueError: bad secret ****" in str(fourth["exc"])


def test_bad_format_args_are_logged_not_raised(json_log: io.StringIO) -> None:
    register_secret("arg-secret-77")
    logging.getLogger("agent.test").info("%d items", "arg-secret-77")
    (record,) = records(json_log)
    assert record["message"] == "unformattable log message '%d items' % ('****',)"


def test_human_logging_format() -> None:
    stream = io.StringIO()
    register_secret("human-secret-99")
    with logging_to(stream, json_format=False):
        logging.getLogger("agent.human").warning("careful with human-secret-99")
        try:
            raise KeyError("human-secret-99")
        except KeyError:
            logging.getLogger("agent.human").exception("lost")
    lines = stream.getvalue().splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert re.fullmatch(
        rf"{stamp} WARNING  \[MainThread\] agent.human: careful with \*{{4}}", lines[0]
    )
    assert "human-secret-99" not in stream.getvalue()
    assert lines[-1] == "KeyError: '****'"


@pytest.mark.parametrize(
    ("level", "root", "pykka", "others"),
    [
        ("debug", logging.DEBUG, logging.INFO, logging.DEBUG),
        ("info", logging.INFO, logging.WARNING, logging.WARNING),
        ("error", logging.ERROR, logging.ERROR, logging.ERROR),
    ],
)
def test_logger_levels(level: str, root: int, pykka: int, others: int) -> None:
    with logging_to(io.StringIO(), json_format=True, level=level):
        assert logging.getLogger().level == root
        assert logging.getLogger("pykka").level == pykka
        assert logging.getLogger("websocket").level == others
        assert logging.getLogger("urllib3").level == others
        assert len(logging.getLogger().handlers) == 1


def test_setup_logging_rejects_unknown_level() -> None:
    with pytest.raises(ValueError, match="invalid level 'loud'"):
        setup_logging("loud", True, io.StringIO())
