"""Aggregating a ``docker pull`` progress stream into ``update_layer_progress`` (PROTOCOL §5.5).

Pure: :meth:`PullProgress.feed` takes one decoded stream line and the current monotonic time and
returns the event payload to send now, or None (throttled). An in-band error line raises
:class:`PullError`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

STATUS_PRIORITY = {
    "Downloading": 0,
    "Extracting": 1,
    "Verifying Checksum": 2,
    "Download complete": 3,
    "Pull complete": 4,
    "Already exists": 5,
    "Waiting": 6,
    "Pulling fs layer": 7,
}
MAX_LAYERS = 20
#: distinct layers followed per pull (dockerd stops at 128; a stream with more is hostile)
MAX_TRACKED_LAYERS = 512
THROTTLE_S = 0.5
THROTTLE_POINTS = 5
SPEED_SAMPLE_S = 1.0
SPEED_SAMPLES = 3
MIB = 1024 * 1024


class PullError(Exception):
    """The daemon reported an error inside the pull stream."""


@dataclass(slots=True)
class _Layer:
    id: str
    status: str = ""
    current: int = 0
    total: int = 0

    @property
    def percent(self) -> int:
        return int(self.current * 100 / self.total) if self.total > 0 else 0


class PullProgress:
    def __init__(self, container_id: str, now: float) -> None:
        self._container_id = container_id
        self._layers: dict[str, _Layer] = {}
        self._sum_done = 0
        self._sum_total = 0
        self._last_emit: float | None = None
        self._last_percent = 0
        self._speed_at = now
        self._speed_bytes = 0
        self._samples: deque[float] = deque(maxlen=SPEED_SAMPLES)
        self.speed_mbps = 0.0
        self.last_status = ""

    def feed(self, line: Any, now: float) -> dict[str, Any] | None:
        if not isinstance(line, dict):
            return None
        if line.get("error") or line.get("errorDetail"):
            detail = line.get("errorDetail")
            message = line.get("error") or (
                detail.get("message") if isinstance(detail, dict) else detail
            )
            raise PullError(str(message))
        status = str(line.get("status") or "")
        if status:
            self.last_status = status
        layer_id = line.get("id")
        if not layer_id or not isinstance(layer_id, str) or not _is_layer_status(status):
            return None
        layer = self._layers.get(layer_id)
        if layer is None:
            if len(self._layers) >= MAX_TRACKED_LAYERS:
                return None
            layer = self._layers[layer_id] = _Layer(layer_id)
        self._count(layer, -1)
        layer.status = status
        if status in ("Pull complete", "Already exists"):
            layer.current = layer.total
        else:
            detail = line.get("progressDetail") or {}
            layer.current = _int(detail.get("current")) if isinstance(detail, dict) else 0
            total = _int(detail.get("total")) if isinstance(detail, dict) else 0
            if total > 0:
                layer.total = total
        self._count(layer, +1)
        percent = self.overall_percent()
        self._sample_speed(now)
        completion = "complete" in status.lower() or status == "Already exists"
        due = (
            self._last_emit is None
            or now - self._last_emit >= THROTTLE_S
            or abs(percent - self._last_percent) >= THROTTLE_POINTS
            or completion
        )
        if not due:
            return None
        self._last_emit = now
        self._last_percent = percent
        return self.payload()

    def _count(self, layer: _Layer, sign: int) -> None:
        """Running sums over the layers whose size is known: O(1) per line, not O(layers)."""
        if layer.total > 0:
            self._sum_total += sign * layer.total
            self._sum_done += sign * layer.current

    def _downloaded(self) -> tuple[int, int]:
        return self._sum_done, self._sum_total

    def overall_percent(self) -> int:
        done, total = self._downloaded()
        return int(done * 100 / total) if total > 0 else 0

    def _sample_speed(self, now: float) -> None:
        delta = now - self._speed_at
        if delta < SPEED_SAMPLE_S:
            return
        done, _ = self._downloaded()
        moved = done - self._speed_bytes
        if moved > 0:
            self._samples.append(moved / delta / MIB)
            self.speed_mbps = sum(self._samples) / len(self._samples)
        self._speed_bytes = done
        self._speed_at = now

    def payload(self) -> dict[str, Any]:
        layers = sorted(self._layers.values(), key=lambda la: STATUS_PRIORITY.get(la.status, 99))
        counts = {s: 0 for s in ("Downloading", "Extracting", "Already exists")}
        complete = 0
        for layer in layers:
            if layer.status in counts:
                counts[layer.status] += 1
            if layer.status in ("Pull complete", "Download complete"):
                complete += 1
        total = len(layers)
        percent = self.overall_percent()
        if counts["Downloading"]:
            summary = f"Downloading {counts['Downloading']} of {total} layers ({percent}%)"
        elif counts["Extracting"]:
            summary = f"Extracting {counts['Extracting']} of {total} layers ({percent}%)"
        elif total and complete + counts["Already exists"] == total:
            cached = counts["Already exists"]
            summary = (
                f"Pull complete ({total} layers, {cached} cached)"
                if cached
                else f"Pull complete ({total} layers)"
            )
        else:
            summary = f"Pulling image ({percent}%)"
        shown = layers[:MAX_LAYERS]
        return {
            "container_id": self._container_id,
            "overall_progress": percent,
            "total_layers": total,
            "remaining_layers": total - len(shown),
            "summary": summary,
            "speed_mbps": round(self.speed_mbps, 2),
            "layers": [
                {
                    "id": la.id,
                    "status": la.status,
                    "current": la.current,
                    "total": la.total,
                    "percent": la.percent,
                }
                for la in shown
            ],
        }


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _is_layer_status(status: str) -> bool:
    """Lines with an ``id`` that are about the image, not a layer, are skipped: "Pulling from
    library/x" carries the tag as id, and "Digest:"/"Status:" lines carry none."""
    return not status.startswith(("Pulling from", "Digest:", "Status:"))
