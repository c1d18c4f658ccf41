"""The partition report's charts, drawn as inline SVG: bars (one series, or two side by side) and lines (steps
or points), each with its axes, ticks, title and legend. A report is rendered by every run's driver; text is
all a chart needs, so no plotting library is loaded for it (a browser draws the SVG, crisp at any zoom). Inline
in an HTML page, an ``<svg>`` needs no namespace declaration; the charts carry none, so the page names no URL."""

from __future__ import annotations

import functools
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

WIDTH, HEIGHT = 520, 320
LEFT, RIGHT, TOP = 62, 16, 34  # room for the y axis's ticks and label, and for the title
FONT = "system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif"
TEXT, AXIS, GRID = "#1d2330", "#5a6475", "#e6e9f0"
PALETTE = ("#3b6fb6", "#e07b39", "#3a9a5b", "#c0392b", "#8e6bbf", "#8c564b", "#d46aa8", "#7f7f7f", "#b5a33a", "#2aa7b8")
CHAR_PX = 6.2  # the width of a tick label's character at its size, for the room rotated labels need


@dataclass(frozen=True)
class Series:
    label: str
    values: Sequence[float]
    color: str


def bars(title: str, categories: Sequence[str], series: Sequence[Series], *, ylabel: str, xlabel: str = "",
         rotate: bool = False, legend: bool = False) -> str:
    """A bar per category and series (series side by side within a category), from zero up."""
    bottom = _bottom(categories, rotate, xlabel)
    top = max([v for s in series for v in s.values] + [0.0])
    frame = _Frame(0.0, len(categories) or 1, top, bottom)
    width = (0.7 if len(series) == 1 else 0.8) / max(1, len(series))
    shapes = []
    for number, one in enumerate(series):
        offset = (number - (len(series) - 1) / 2) * width
        for position, value in enumerate(one.values):
            x0, x1 = frame.x(position + 0.5 + offset - width / 2), frame.x(position + 0.5 + offset + width / 2)
            y = frame.y(value)
            shapes.append(f'<rect x="{x0:.1f}" y="{y:.1f}" width="{x1 - x0:.1f}" height="{frame.y(0) - y:.1f}" '
                          f'fill="{one.color}"><title>{escape(categories[position])}: {value:g}</title></rect>')
    ticks = [(position + 0.5, name) for position, name in enumerate(categories)]
    return _chart(title, frame, shapes, ticks, rotate=rotate, xlabel=xlabel, ylabel=ylabel,
                  legend=series if legend else ())


def lines(title: str, xs: Sequence[float], series: Sequence[Series], *, ylabel: str, xlabel: str = "",
          xlim: tuple[float, float] | None = None, steps: bool = False, points: bool = False,
          mark_x: float | None = None, legend: bool = False) -> str:
    """A line per series through (x, value), from zero up; ``steps``: each value held across its x's bin (``xs``
    evenly spaced, the bins' centres); ``points``: a dot at each value; ``mark_x``: a dotted vertical line."""
    half = (xs[1] - xs[0]) / 2 if steps and len(xs) > 1 else 0.0
    low, high = xlim or ((xs[0] - half, xs[-1] + half) if xs else (0.0, 1.0))
    high = high if high > low else low + 1.0
    top = max([v for s in series for v in s.values] + [0.0])
    frame = _Frame(low, high, top, _bottom((), False, xlabel))
    shapes = []
    if mark_x is not None:
        shapes.append(f'<line x1="{frame.x(mark_x):.1f}" x2="{frame.x(mark_x):.1f}" y1="{frame.y(frame.y_high):.1f}" '
                      f'y2="{frame.y(0):.1f}" stroke="#999" stroke-dasharray="2 3"/>')
    for one in series:
        if steps:
            path = "".join(f"{'M' if i == 0 else 'L'}{frame.x(x - half):.1f},{frame.y(v):.1f}L{frame.x(x + half):.1f},"
                           f"{frame.y(v):.1f}" for i, (x, v) in enumerate(zip(xs, one.values, strict=True)))
        else:
            path = "".join(f"{'M' if i == 0 else 'L'}{frame.x(x):.1f},{frame.y(v):.1f}"
                           for i, (x, v) in enumerate(zip(xs, one.values, strict=True)))
        if path:
            shapes.append(f'<path d="{path}" fill="none" stroke="{one.color}" stroke-width="1.6"/>')
        if points:
            shapes.extend(f'<circle cx="{frame.x(x):.1f}" cy="{frame.y(v):.1f}" r="2.2" fill="{one.color}"/>'
                          for x, v in zip(xs, one.values, strict=True))
    ticks = [(value, _number(value, step)) for value, step in _ticks(low, high) if value <= high + 1e-9 * (high - low)]
    return _chart(title, frame, shapes, ticks, rotate=False, xlabel=xlabel, ylabel=ylabel,
                  legend=series if legend else ())


@dataclass(frozen=True)
class _Frame:
    """Data coordinates to the chart's pixels: x in [x_low, x_high], y from 0 to the first tick at or above ``top``."""

    x_low: float
    x_high: float
    top: float
    bottom: float  # pixels below the plotting area (ticks and the x axis's label)

    @functools.cached_property
    def y_high(self) -> float:
        return _ticks(0.0, self.top)[-1][0] if self.top > 0 else 1.0

    def x(self, value: float) -> float:
        return LEFT + (value - self.x_low) / (self.x_high - self.x_low) * (WIDTH - LEFT - RIGHT)

    def y(self, value: float) -> float:
        return HEIGHT - self.bottom - value / self.y_high * (HEIGHT - self.bottom - TOP)


def _chart(title: str, frame: _Frame, shapes: list[str], xticks: Sequence[tuple[float, str]], *, rotate: bool,
           xlabel: str, ylabel: str, legend: Sequence[Series]) -> str:
    base, left, right = frame.y(0), LEFT, WIDTH - RIGHT
    parts = [f'<text x="{WIDTH / 2}" y="20" text-anchor="middle" font-size="13" font-weight="600">{escape(title)}</text>']
    for value, step in _ticks(0.0, frame.y_high):
        y = frame.y(value)
        parts.append(f'<line x1="{left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID}"/>'
                     f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="10" fill="{AXIS}">'
                     f"{_number(value, step)}</text>")
    parts.extend(shapes)
    parts.append(f'<line x1="{left}" x2="{right}" y1="{base:.1f}" y2="{base:.1f}" stroke="{AXIS}"/>'
                 f'<line x1="{left}" x2="{left}" y1="{TOP}" y2="{base:.1f}" stroke="{AXIS}"/>')
    for value, label in xticks:
        x = frame.x(value)
        anchor = (f'text-anchor="end" transform="rotate(-40 {x:.1f} {base + 14:.1f})"' if rotate
                  else 'text-anchor="middle"')
        parts.append(f'<text x="{x:.1f}" y="{base + 14:.1f}" {anchor} font-size="10" fill="{AXIS}">{escape(label)}</text>')
    if xlabel:
        parts.append(f'<text x="{(left + right) / 2:.1f}" y="{HEIGHT - 6}" text-anchor="middle" font-size="11" '
                     f'fill="{AXIS}">{escape(xlabel)}</text>')
    middle = (TOP + base) / 2
    parts.append(f'<text x="14" y="{middle:.1f}" text-anchor="middle" font-size="11" fill="{AXIS}" '
                 f'transform="rotate(-90 14 {middle:.1f})">{escape(ylabel)}</text>')
    for number, one in enumerate(legend):
        y = TOP + 4 + 15 * number
        parts.append(f'<rect x="{right - 130}" y="{y}" width="10" height="10" fill="{one.color}"/>'
                     f'<text x="{right - 115}" y="{y + 9}" font-size="10">{escape(one.label)}</text>')
    return (f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" '
            f'height="{HEIGHT}" role="img" aria-label="{escape(title)}" font-family="{FONT}" fill="{TEXT}">'
            f"<title>{escape(title)}</title>{''.join(parts)}</svg>")


def _bottom(categories: Sequence[str], rotate: bool, xlabel: str) -> float:
    """Pixels below the plotting area: the tick labels (slanted ones need their length's room) and the label."""
    ticks = 0.7 * CHAR_PX * max((len(c) for c in categories), default=0) + 14 if rotate else 18
    return ticks + (22 if xlabel else 6)


def _ticks(low: float, high: float, wanted: int = 5) -> list[tuple[float, float]]:
    """Round tick values from ``low`` to just past ``high`` (steps of 1, 2, 2.5 or 5 times a power of ten), each
    with its step."""
    span = high - low if high > low else 1.0
    raw = span / wanted
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.ceil(low / step - 1e-9)
    count = math.ceil(high / step - 1e-9) - first
    return [(round((first + i) * step, 12), step) for i in range(count + 1)]


def _number(value: float, step: float) -> str:
    """A tick's label, with as many decimals as its step has."""
    decimals = next(d for d in range(12) if abs(round(step, d) - step) < 1e-9 * step)
    return f"{value:,.{decimals}f}"


def escape(value: object) -> str:
    """Any value as text safe inside HTML and SVG elements and attributes."""
    return html.escape(str(value))
