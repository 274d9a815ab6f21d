"""``docker compose --progress json`` output -> ``deploy_progress`` stages and messages.

Pure logic, no I/O. Both formats are understood, line by line:

* Compose v2: ``{"id":"Container site-web-1","status":"Started"}`` for resources,
  ``{"id":"web","text":"Pulling"}`` for pulls (``status`` then holds details) and
  ``{"id":"<layer>","parent_id":"web","text":"Downloading","current":…,"total":…}`` for layers.
* Compose v5: ``{"id":"Container site-web-1","status":"Done","text":"Started"}`` (``status`` is
  Working/Done/Error/Warning), ``{"id":"Image nginx:1.27","status":"Working","text":"Pulling"}``
  and layers with ``parent_id`` ``"Image …"``.
* Both: ``{"error":true,"message":"…"}`` for the command's error, logrus lines
  ``{"level":"warning","msg":"…"}``, and (rarely) plain text.

:class:`ProgressTracker` turns lines into (stage, message) pairs, aggregates layer progress per
image and throttles it (at most one pull-progress message per ``interval``, 4/s by default),
and keeps what an error report needs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from messages.records import record

V5_STATES = frozenset({"Working", "Done", "Error", "Warning"})
RESOURCES = ("Container", "Network", "Volume", "Image")
#: words of a container that is being started rather than created
STARTING_WORDS = frozenset({"Starting", "Started", "Waiting", "Healthy", "Running"})
#: layer words that mean the layer is fully there
LAYER_DONE = frozenset({"Pull complete", "Already exists"})
#: layer words worth a progress message (by then compose has listed every layer of the image)
LAYER_PROGRESS = frozenset({"Downloading", "Download complete", "Extracting", "Pull complete"})
MESSAGE_LIMIT = 1000
_TEXT_KEEP = 20


@record
class ProgressLine:
    """One parsed output line.

    ``kind``: ``resource`` (Container/Network/Volume/Image, or ``Service`` for v2 pull lines),
    ``layer`` (image layer progress, ``parent`` names the image or service), ``error`` (the
    command failed: ``text``), ``log`` (a logrus line: ``level``, ``text``) or ``text``.
    """

    kind: str
    resource: str = ""
    name: str = ""
    word: str = ""
    details: str = ""
    failed: bool = False
    parent: str = ""
    current: int | None = None
    total: int | None = None
    percent: int | None = None
    level: str = ""
    text: str = ""


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _split_id(ident: str) -> tuple[str, str]:
    """``Container site-web-1`` -> (Container, site-web-1); ``service:web:1`` -> (Service, web);
    a bare v2 pull id (the service name) -> (Service, name)."""
    head, _, rest = ident.partition(" ")
    if head in RESOURCES and rest:
        return head, rest
    if ident.startswith("service:"):
        return "Service", ident.split(":")[1]
    return "Service", ident


def parse_line(raw: str) -> ProgressLine | None:
    """One line of compose's stderr; None for a blank line. Never raises."""
    line = raw.strip()
    if not line:
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        obj = None
    if not isinstance(obj, dict):
        return ProgressLine(kind="text", text=line)
    if obj.get("error") is True or ("message" in obj and "id" not in obj and "msg" not in obj):
        return ProgressLine(kind="error", text=str(obj.get("message", "")).strip())
    if "msg" in obj and "level" in obj:
        return ProgressLine(kind="log", level=str(obj["level"]), text=str(obj["msg"]))
    ident = obj.get("id")
    if not isinstance(ident, str) or not ident:
        return ProgressLine(kind="text", text=line)
    status = str(obj.get("status", ""))
    text = str(obj.get("text", ""))
    if status in V5_STATES and "text" in obj:  # v5
        word, details = text, str(obj.get("details", ""))
        failed = status == "Error"
        if failed and " " in word and word != "Error":  # the message itself is in "text"
            word, details = "Error", word
    elif "text" in obj:  # v2 pull and layer lines: "status" holds the details
        word, details = text, status
        failed = word == "Error"
    else:  # v2 resource lines: one word, or the error message itself
        word, details = status, ""
        failed = word == "Error"
        if " " in word:
            word, details, failed = "Error", word, True
    if details in ("0B",):
        details = ""
    parent = obj.get("parent_id")
    if isinstance(parent, str) and parent:
        return ProgressLine(
            kind="layer",
            name=ident,
            word=word,
            details=details,
            failed=failed,
            parent=parent,
            current=_int(obj.get("current")),
            total=_int(obj.get("total")),
            percent=_int(obj.get("percent")),
        )
    resource, name = _split_id(ident)
    return ProgressLine(
        kind="resource", resource=resource, name=name, word=word, details=details, failed=failed
    )


def stage_of(line: ProgressLine, phase: str) -> str | None:
    """The §5.7 stage of a resource or layer line in ``phase`` (pull, up, down); None: keep."""
    if line.kind == "layer":
        return "pulling_image"
    if line.kind != "resource":
        return None
    if phase == "down":
        return "executing"
    if line.resource == "Image" or (line.resource == "Service" and phase == "pull"):
        return "pulling_image"
    if line.resource == "Service" and line.word in ("Pulling", "Pulled"):
        return "pulling_image"
    if line.resource == "Network":
        return "creating_networks"
    if line.resource == "Volume":
        return "creating_volumes"
    if line.word in STARTING_WORDS:
        return "starting"
    return "creating"


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 1] + "…"


def describe(line: ProgressLine) -> str:
    """A one-line message for a resource line: ``Container site-web-1: Started``."""
    label = f"{line.resource} {line.name}"
    if line.failed:
        return _clip(f"{label}: Error: {line.details}" if line.details else f"{label}: Error")
    return _clip(f"{label}: {line.word}" + (f" ({line.details})" if line.details else ""))


@dataclass
class _Layer:
    word: str = ""
    current: int = 0
    total: int = 0


def _layer_fraction(layer: _Layer) -> float:
    """0..1: downloading is the first half of a layer's work, extracting the second."""
    if layer.word in LAYER_DONE:
        return 1.0
    share = layer.current / layer.total if layer.total > 0 else 0.0
    share = min(1.0, max(0.0, share))
    if layer.word in ("Download complete", "Verifying Checksum"):
        return 0.5
    if layer.word == "Extracting":
        return 0.5 + share / 2
    if layer.word == "Downloading":
        return share / 2
    return 0.0


@record
class Progress:
    stage: str
    message: str


@dataclass
class ProgressTracker:
    """Feeds compose output lines of one command; collects what the final report needs.

    ``phase`` is ``pull``, ``up`` or ``down``; ``stage`` starts as ``initial_stage``.
    """

    phase: str
    initial_stage: str = "executing"
    interval: float = 0.25
    errors: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    stage: str = ""
    _layers: dict[str, dict[str, _Layer]] = field(default_factory=dict)
    _percent: dict[str, int] = field(default_factory=dict)  # per image, never decreasing
    _last_pull: float = -math.inf
    _last_message: str = ""

    def __post_init__(self) -> None:
        self.stage = self.stage or self.initial_stage

    def feed(self, raw: str, now: float) -> list[Progress]:
        """Progress messages to send for this line (often none)."""
        line = parse_line(raw)
        if line is None:
            return []
        match line.kind:
            case "error":
                if line.text and line.text not in self.errors:
                    self.errors.append(line.text)
                return []
            case "log":
                if line.level in ("warning", "error", "fatal"):
                    self.warnings.append(line.text)
                    return self._emit(self.stage, _clip(f"{line.level}: {line.text}"))
                return []
            case "text":
                self.texts = [*self.texts[-(_TEXT_KEEP - 1) :], line.text]
                return []
            case "layer":
                return self._layer(line, now)
        stage = stage_of(line, self.phase) or self.stage
        message = describe(line)
        if line.failed:
            self.failures.append(message)
        return self._emit(stage, message)

    def _emit(self, stage: str, message: str) -> list[Progress]:
        self.stage = stage
        if message == self._last_message:
            return []  # v5 prints some lines twice
        self._last_message = message
        return [Progress(stage, message)]

    def _layer(self, line: ProgressLine, now: float) -> list[Progress]:
        layers = self._layers.setdefault(line.parent, {})
        layer = layers.setdefault(line.name, _Layer())
        layer.word = line.word
        if line.total:
            layer.total, layer.current = line.total, line.current or 0
        elif line.word in LAYER_DONE:
            layer.current = layer.total
        self.stage = "pulling_image"
        if line.failed:
            self.failures.append(_clip(f"{self._image(line.parent)}: {line.details}"))
        if line.word not in LAYER_PROGRESS or now - self._last_pull < self.interval:
            return []
        self._last_pull = now
        return self._emit("pulling_image", self.pull_summary(line.parent))

    @staticmethod
    def _image(parent: str) -> str:
        resource, name = _split_id(parent)
        return f"image {name}" if resource == "Image" else f"the image of {name}"

    def pull_summary(self, parent: str) -> str:
        """``Pulling image nginx:1.27: 45% (1/3 layers done)``."""
        layers = self._layers.get(parent, {})
        done = sum(1 for layer in layers.values() if layer.word in LAYER_DONE)
        share = sum(_layer_fraction(layer) for layer in layers.values())
        percent = int(100 * share / len(layers)) if layers else 0
        percent = self._percent[parent] = max(percent, self._percent.get(parent, 0))
        return _clip(
            f"Pulling {self._image(parent)}: {percent}% ({done}/{len(layers)} layers done)"
        )

    def error_text(self) -> str:
        """What went wrong, in compose's own words (empty if it printed nothing useful)."""
        lines: list[str] = []
        for text in self.errors:
            for part in text.splitlines():
                if part.strip() and part.strip() not in lines:
                    lines.append(part.strip())
        if lines:
            return "; ".join(lines)
        if self.failures:
            return "; ".join(dict.fromkeys(self.failures))
        return "; ".join(self.texts[-5:])
