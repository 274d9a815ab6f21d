"""Time formats, written once (messages/timefmt.py), as Go's layouts write them."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from actors.commands.images import image_element
from actors.health_checks import result_payload
from messages.health import CheckOutcome
from messages.timefmt import local_rfc3339, rfc3339_nano, utc_seconds, utc_z


def test_rfc3339_nano_trims_zeros_like_go() -> None:
    assert rfc3339_nano(1_752_436_862_500_000_000) == "2025-07-13T20:01:02.5Z"
    assert rfc3339_nano(1_752_436_862_000_000_000) == "2025-07-13T20:01:02Z"
    assert rfc3339_nano(1_752_436_862_000_000_001) == "2025-07-13T20:01:02.000000001Z"
    before = utc_seconds(time.time_ns())
    now = rfc3339_nano()  # now, by default
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z", now), now
    assert now[:19] >= before[:19]


def test_utc_seconds_rounds_down_to_whole_seconds() -> None:
    assert utc_seconds(0) == "1970-01-01T00:00:00Z"
    assert utc_seconds(1_783_973_101_999_999_999) == "2026-07-13T20:05:01Z"
    assert utc_seconds(1752436800 * 1_000_000_000) == "2025-07-13T20:00:00Z"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("2026-11-27T02:08:48.427227445Z", "2026-11-27T02:08:48Z"),
        ("2026-11-27T02:08:48Z", "2026-11-27T02:08:48Z"),
        ("2026-11-27T03:08:48.5+01:00", "2026-11-27T02:08:48Z"),
        ("2026-12-31T22:30:00-05:30", "2027-01-01T04:00:00Z"),
        ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z"),
        ("", ""),
        ("yesterday", "yesterday"),
        ("2026-02-30T00:00:00Z", "2026-02-30T00:00:00Z"),  # not a date: passed through
        ("0001-01-01T00:30:00+01:00", "0001-01-01T00:30:00+01:00"),  # before year 1
    ],
)
def test_utc_z(given: str, expected: str) -> None:
    assert utc_z(given) == expected


@pytest.fixture
def zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize(
    ("tz", "expected"),
    [("UTC", "2025-07-13T20:00:00Z"), ("IST-5:30", "2025-07-14T01:30:00+05:30")],
)
def test_local_rfc3339_in_the_local_zone(
    zone: None, monkeypatch: pytest.MonkeyPatch, tz: str, expected: str
) -> None:
    monkeypatch.setenv("TZ", tz)
    time.tzset()
    assert local_rfc3339(1752436800) == expected


def test_every_whole_second_stamp_is_the_same_format() -> None:
    ns = 1_783_973_101_999_999_999
    health = result_payload("c" * 12, "h", CheckOutcome(healthy=True), ns)["timestamp"]
    image = image_element({"Id": "sha256:" + "a" * 64, "Created": ns // 1_000_000_000}, {})
    assert health == image["created"] == utc_seconds(ns) == "2026-07-13T20:05:01Z"
