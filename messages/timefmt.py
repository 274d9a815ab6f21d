"""Time as the agent writes it, in one place: on the wire, in status.json, in command results.

Go's layouts, since the backend parses what the Go agent sends:

* :func:`rfc3339_nano`: UTC with nanoseconds, trailing zeros trimmed (``time.RFC3339Nano``);
* :func:`utc_seconds`: UTC, whole seconds (``t.UTC().Format(time.RFC3339)``);
* :func:`utc_z`: a time Docker wrote in RFC 3339, as :func:`utc_seconds` would write it;
* :func:`local_rfc3339`: whole seconds in the local zone (``time.Unix(s, 0).Format(RFC3339)``).

Standard library only, so the wire codec and every actor can use it.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

_NS = 1_000_000_000
_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.\d+)?(?:([Zz])|([+-])(\d\d):(\d\d))"
)


def rfc3339_nano(ns: int | None = None) -> str:
    """UTC RFC 3339 with nanoseconds, trailing zeros trimmed like Go's ``RFC3339Nano``."""
    if ns is None:
        ns = time.time_ns()
    seconds, frac = divmod(ns, _NS)
    base = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if frac:
        base += "." + f"{frac:09d}".rstrip("0")
    return base + "Z"


def utc_seconds(ns: int) -> str:
    """RFC 3339, UTC, whole seconds (rounded down): ``2026-07-13T20:05:01Z``."""
    return datetime.fromtimestamp(ns // _NS, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def utc_z(text: str) -> str:
    """An RFC 3339 time as UTC ``YYYY-MM-DDTHH:MM:SSZ`` (fraction dropped, like Go's
    ``t.UTC().Format(time.RFC3339)``); anything that does not parse is returned unchanged."""
    match = _RFC3339.fullmatch(text.strip())
    if match is None:
        return text
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    try:
        moment = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
        if match.group(8):
            offset = timedelta(hours=int(match.group(9)), minutes=int(match.group(10)))
            moment = moment - offset if match.group(8) == "+" else moment + offset
    except (ValueError, OverflowError):
        return text
    return f"{moment.year:04d}-{moment:%m-%dT%H:%M:%S}Z"


def local_rfc3339(seconds: int) -> str:
    """Whole-second RFC 3339 in the local time zone (Go ``time.Unix(s,0).Format(RFC3339)``)."""
    text = datetime.fromtimestamp(seconds).astimezone().isoformat(timespec="seconds")
    return text[:-6] + "Z" if text.endswith("+00:00") else text
