"""Charts drawn on the server as inline SVG: no JavaScript, no plotting library, no CDN.

Each function takes plain numbers and returns escaped SVG markup (Markup) that
the templates embed as is. Every chart is labelled (title, axes, legend) so
a screenshot reads on its own; sizes come from a viewBox so charts scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from markupsafe import Markup, escape

ECE_COLOUR = "#c2410c"
ACCURACY_COLOUR = "#2563eb"
THRESHOLD_COLOUR = "#dc2626"
MARKER_COLOUR = "#7c3aed"
BAR_COLOUR = "#3b82f6"
RAW_COLOUR = "#9ca3af"
AXIS_COLOUR = "#6b7280"
GRID_COLOUR = "#e5e7eb"


@dataclass(frozen=True)
class Series:
    label: str
    colour: str
    points: list[tuple[datetime, float]]


@dataclass(frozen=True)
class Marker:
    at: datetime
    label: str


@dataclass(frozen=True)
class Bin:
    lower: float
    upper: float
    count: int
    accuracy: float | None
    mean_confidence: float | None


@dataclass
class _Frame:
    """Plot area inside a viewBox, with data -> pixel mapping."""

    width: float
    height: float
    left: float = 52
    right: float = 16
    top: float = 28
    bottom: float = 40
    parts: list[str] = field(default_factory=list)

    @property
    def inner_w(self) -> float:
        return self.width - self.left - self.right

    @property
    def inner_h(self) -> float:
        return self.height - self.top - self.bottom

    def x(self, frac: float) -> float:
        return self.left + max(0.0, min(1.0, frac)) * self.inner_w

    def y(self, frac: float) -> float:
        return self.top + (1.0 - max(0.0, min(1.0, frac))) * self.inner_h

    def add(self, svg: str) -> None:
        self.parts.append(svg)

    def render(self, label: str, css_class: str) -> Markup:
        head = (
            f'<svg class="chart {css_class}" viewBox="0 0 {self.width:g} {self.height:g}" '
            f'role="img" aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">'
        )
        return Markup(head + "".join(self.parts) + "</svg>")


def _text(x: float, y: float, content: str, *, anchor: str = "middle", cls: str = "") -> str:
    css = f' class="{cls}"' if cls else ""
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{css}>{escape(content)}</text>'


def _line(x1: float, y1: float, x2: float, y2: float, colour: str, extra: str = "") -> str:
    return (
        f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{colour}"{extra}/>'
    )


def nice_max(value: float) -> float:
    """A round axis maximum at or above `value` (0.05, 0.1, 0.2, 0.25, 0.5, 1...)."""
    for step in (0.05, 0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0):
        if value <= step:
            return step
    return float(int(value) + 1)


def _y_axis(frame: _Frame, y_max: float, title: str, ticks: int = 4) -> None:
    for i in range(ticks + 1):
        value = y_max * i / ticks
        py = frame.y(i / ticks)
        frame.add(_line(frame.left, py, frame.left + frame.inner_w, py, GRID_COLOUR))
        frame.add(_text(frame.left - 6, py + 4, f"{value:.2f}", anchor="end", cls="tick"))
    mid = frame.top + frame.inner_h / 2
    frame.add(
        f'<text x="12" y="{mid:.1f}" text-anchor="middle" class="axis-title" '
        f'transform="rotate(-90 12 {mid:.1f})">{escape(title)}</text>'
    )


def _time_ticks(start: datetime, end: datetime) -> list[tuple[datetime, str]]:
    span = (end - start).total_seconds()
    if span <= 0:
        return [(start, start.strftime("%d %b %H:%M"))]
    if span <= 2 * 86400:
        step, fmt = timedelta(hours=6 if span > 12 * 3600 else 1), "%d %b %H:%M"
    else:
        days = max(1, round(span / 86400 / 7))
        step, fmt = timedelta(days=days), "%d %b"
    first = start.replace(minute=0, second=0, microsecond=0)
    if step >= timedelta(days=1):
        first = first.replace(hour=0)
    ticks: list[tuple[datetime, str]] = []
    tick = first
    while tick <= end and len(ticks) < 12:
        if tick >= start:
            ticks.append((tick, tick.strftime(fmt)))
        tick += step
    return ticks


def sparkline(
    values: Sequence[float | None], threshold: float | None, width: int = 120, height: int = 30
) -> Markup:
    """ECE over recent days at a glance; the dashed line is the task's threshold."""
    points = [(i, v) for i, v in enumerate(values) if v is not None]
    if not points:
        return Markup('<span class="muted">no history</span>')
    top = nice_max(max([v for _, v in points] + [threshold or 0.0]) * 1.1)
    n = max(len(values) - 1, 1)

    def px(i: int) -> float:
        return 2 + (width - 4) * i / n

    def py(v: float) -> float:
        return 2 + (height - 4) * (1 - min(v / top, 1.0))

    parts = []
    if threshold is not None:
        t = py(threshold)
        parts.append(_line(0, t, width, t, THRESHOLD_COLOUR, ' stroke-dasharray="3 2"'))
    path = " ".join(f"{px(i):.1f},{py(v):.1f}" for i, v in points)
    parts.append(
        f'<polyline points="{path}" fill="none" stroke="{ECE_COLOUR}" stroke-width="1.5"/>'
    )
    last_i, last_v = points[-1]
    over = threshold is not None and last_v > threshold
    colour = THRESHOLD_COLOUR if over else ECE_COLOUR
    parts.append(f'<circle cx="{px(last_i):.1f}" cy="{py(last_v):.1f}" r="2.5" fill="{colour}"/>')
    label = f"ECE trend, latest {last_v:.3f}"
    return Markup(
        f'<svg class="sparkline" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="{escape(label)}" '
        f'xmlns="http://www.w3.org/2000/svg">' + "".join(parts) + "</svg>"
    )


def time_series_chart(
    series: Sequence[Series],
    *,
    start: datetime,
    end: datetime,
    threshold: float | None = None,
    markers: Sequence[Marker] = (),
    title: str,
    y_title: str = "value",
    y_max: float | None = None,
) -> Markup:
    """Lines over time with the ECE threshold and calibration activations marked."""
    frame = _Frame(1000, 280, bottom=46)
    values = [v for s in series for _, v in s.points]
    top = y_max or nice_max(max([*values, threshold or 0.0, 0.05]) * 1.1)
    _y_axis(frame, top, y_title)
    span = max((end - start).total_seconds(), 1.0)

    def fx(at: datetime) -> float:
        return frame.x((at - start).total_seconds() / span)

    base = frame.top + frame.inner_h
    for tick, label in _time_ticks(start, end):
        x = fx(tick)
        frame.add(_line(x, base, x, base + 4, AXIS_COLOUR))
        frame.add(_text(x, base + 16, label, cls="tick"))
    frame.add(
        _text(frame.left + frame.inner_w / 2, frame.height - 4, "time (UTC)", cls="axis-title")
    )
    if threshold is not None:
        ty = frame.y(threshold / top)
        frame.add(
            _line(
                frame.left,
                ty,
                frame.left + frame.inner_w,
                ty,
                THRESHOLD_COLOUR,
                ' stroke-dasharray="6 4" stroke-width="1.5"',
            )
        )
        frame.add(
            _text(
                frame.left + 4,
                ty - 5,
                f"threshold {threshold:g}",
                anchor="start",
                cls="threshold-label",
            )
        )
    for marker in markers:
        if not start <= marker.at <= end:
            continue
        mx = fx(marker.at)
        frame.add(_line(mx, frame.top, mx, base, MARKER_COLOUR, ' stroke-dasharray="2 3"'))
        frame.add(_text(mx + 3, frame.top + 10, marker.label, anchor="start", cls="marker-label"))
    for s in series:
        pts = " ".join(f"{fx(t):.1f},{frame.y(v / top):.1f}" for t, v in s.points)
        if len(s.points) > 1:
            frame.add(
                f'<polyline points="{pts}" fill="none" stroke="{s.colour}" stroke-width="2"/>'
            )
        for t, v in s.points[-1:] if len(s.points) > 1 else s.points:
            frame.add(
                f'<circle cx="{fx(t):.1f}" cy="{frame.y(v / top):.1f}" r="3" fill="{s.colour}"/>'
            )
    _legend(frame, [(s.label, s.colour) for s in series], title)
    if not values:
        _empty_note(frame, "no evaluations in this period yet")
    return frame.render(title, "timeseries")


def _empty_note(frame: _Frame, message: str) -> None:
    """A centred caption saying why a chart has nothing to draw."""
    frame.add(
        _text(frame.left + frame.inner_w / 2, frame.top + frame.inner_h / 2, message, cls="empty")
    )


def _legend(frame: _Frame, entries: Sequence[tuple[str, str]], title: str) -> None:
    frame.add(_text(frame.left, 16, title, anchor="start", cls="chart-title"))
    x = frame.width - frame.right
    for label, colour in reversed(entries):
        x -= 8 + 7 * len(label)
        frame.add(f'<rect x="{x - 14:.1f}" y="8" width="10" height="10" fill="{colour}"/>')
        frame.add(_text(x, 17, label, anchor="start", cls="legend"))
        x -= 22


def reliability_diagram(bins: Sequence[Bin], title: str, *, colour: str = BAR_COLOUR) -> Markup:
    """Accuracy per confidence bin as bars against the diagonal; counts above the bars."""
    frame = _Frame(380, 340, left=48, bottom=44)
    _y_axis(frame, 1.0, "accuracy (observed)", ticks=5)
    base = frame.top + frame.inner_h
    for i in range(6):
        x = frame.x(i / 5)
        frame.add(_text(x, base + 15, f"{i / 5:.1f}", cls="tick"))
    frame.add(
        _text(
            frame.left + frame.inner_w / 2,
            frame.height - 6,
            "confidence (predicted)",
            cls="axis-title",
        )
    )
    frame.add(
        _line(
            frame.x(0),
            frame.y(0),
            frame.x(1),
            frame.y(1),
            AXIS_COLOUR,
            ' stroke-dasharray="5 4" class="diagonal"',
        )
    )
    total = sum(b.count for b in bins)
    for b in bins:
        if b.count == 0 or b.accuracy is None:
            continue
        x0, x1 = frame.x(b.lower) + 1, frame.x(b.upper) - 1
        y = frame.y(b.accuracy)
        frame.add(
            f'<rect class="bar" x="{x0:.1f}" y="{y:.1f}" width="{max(x1 - x0, 1):.1f}" '
            f'height="{base - y:.1f}" fill="{colour}" fill-opacity="0.8">'
            f"<title>{escape(_bin_tooltip(b))}</title></rect>"
        )
        if b.mean_confidence is not None:
            gy = frame.y(b.mean_confidence)
            frame.add(_line(x0, gy, x1, gy, THRESHOLD_COLOUR, ' stroke-width="1.5" class="gap"'))
        frame.add(_text((x0 + x1) / 2, min(y, base) - 3, _short_count(b.count), cls="count"))
    frame.add(_text(frame.left, 16, title, anchor="start", cls="chart-title"))
    frame.add(_text(frame.width - frame.right, 16, f"n = {total:,}", anchor="end", cls="legend"))
    if total == 0:
        _empty_note(frame, "no labelled generations in the window")
    return frame.render(title, "reliability")


def _bin_tooltip(b: Bin) -> str:
    conf = f"{b.mean_confidence:.3f}" if b.mean_confidence is not None else "-"
    acc = f"{b.accuracy:.3f}" if b.accuracy is not None else "-"
    return f"({b.lower:.2f}, {b.upper:.2f}]: {b.count} samples, confidence {conf}, accuracy {acc}"


def _short_count(count: int) -> str:
    if count >= 10_000:
        return f"{count / 1000:.0f}k"
    if count >= 1000:
        return f"{count / 1000:.1f}k"
    return str(count)


def histogram(
    counts: Sequence[int], raw_counts: Sequence[int] | None = None, *, title: str
) -> Markup:
    """How confident the model is on all traffic (labelled or not); raw as an outline."""
    frame = _Frame(1000, 240, bottom=44)
    n = len(counts)
    total = sum(counts)
    frac = [c / total if total else 0.0 for c in counts]
    raw_total = sum(raw_counts or [])
    raw_frac = [c / raw_total if raw_total else 0.0 for c in (raw_counts or [])]
    top = nice_max(max([*frac, *raw_frac, 0.01]) * 1.1)
    _y_axis(frame, top, "share of generations")
    base = frame.top + frame.inner_h
    for i, share in enumerate(frac):
        x0, x1 = frame.x(i / n) + 1, frame.x((i + 1) / n) - 1
        y = frame.y(share / top)
        frame.add(
            f'<rect class="hist-bar" x="{x0:.1f}" y="{y:.1f}" width="{x1 - x0:.1f}" '
            f'height="{base - y:.1f}" fill="{BAR_COLOUR}" fill-opacity="0.75">'
            f"<title>{counts[i]:,} generations</title></rect>"
        )
    if raw_frac and raw_total:
        pts = []
        for i, share in enumerate(raw_frac):
            y = frame.y(share / top)
            pts += [f"{frame.x(i / n):.1f},{y:.1f}", f"{frame.x((i + 1) / n):.1f},{y:.1f}"]
        frame.add(
            f'<polyline points="{" ".join(pts)}" fill="none" stroke="#374151" '
            f'stroke-width="1.5" stroke-dasharray="4 2"/>'
        )
    for i in range(11):
        frame.add(_text(frame.x(i / 10), base + 15, f"{i / 10:.1f}", cls="tick"))
    frame.add(
        _text(frame.left + frame.inner_w / 2, frame.height - 6, "confidence", cls="axis-title")
    )
    legend = [("served", BAR_COLOUR)] + ([("raw model", "#374151")] if raw_total else [])
    _legend(frame, legend, title)
    if total == 0:
        _empty_note(frame, "no traffic in the window")
    return frame.render(title, "histogram")
