"""Charts as small hand-written inline SVG: the report's and the sweep report's figures without a plotting library.

A report is written after every `cosim up`; drawing its five figures with matplotlib cost 1.3 s of a 1.8 s run
(the import alone 0.4 s), more than the step loop. These charts need only what they show: axes with round ticks,
rows of tick marks, step curves, markers, bars and spans, a legend. Output is deterministic (the same input gives
the same bytes), self-contained (no font, script or link: the page's own font) and bounded in size: marks that
fall on the same pixel are drawn once, so a million events make a chart of a few thousand marks.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

# matplotlib's default colour cycle (tab10), so that charts keep their familiar colours.
CYCLE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
FONT = 12  # px
CHAR_W = 0.6 * FONT  # a generous average glyph width, for laying out labels without measuring them


def _n(value: float) -> str:
    """A coordinate with at most one decimal, no trailing zeros (small, stable output)."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _e(text: object) -> str:
    return html.escape(str(text))


def nice_ticks(low: float, high: float, count: int = 7) -> list[float]:
    """Round tick values (1, 2, 2.5 or 5 times a power of ten) covering [low, high]."""
    if not math.isfinite(low) or not math.isfinite(high) or high <= low:
        return [low]
    raw = (high - low) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(power * m for m in (1, 2, 2.5, 5, 10) if power * m >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def tick_label(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6g}"


@dataclass
class LegendEntry:
    label: str
    colour: str
    kind: str = "line"  # line, tick, marker shape (o s ^ v), box
    opacity: float = 1.0
    dash: str = ""


@dataclass
class Chart:
    """A plot area in data coordinates inside a fixed-size SVG. Set the ranges, add marks, then ``svg()``.

    ``rows`` (optional) are category labels on the y axis, bottom to top at y = 0, 1, 2, ... (like matplotlib's
    yticks); ``x_categories`` likewise on the x axis at x = 0, 1, 2, ..."""

    title: str
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    plot_height: float = 260.0
    width: float = 900.0
    x_label: str = ""
    y_label: str = ""
    rows: Sequence[str] = ()
    x_categories: Sequence[str] = ()
    legend_at: str = "bottom"  # bottom (one row under the axis label) or right (a column)
    x_grid: bool = False
    y_grid: bool = False
    title_size: int = 14
    marks: list[str] = field(default_factory=list)
    legend: list[LegendEntry] = field(default_factory=list)

    def __post_init__(self) -> None:
        label_chars = max((len(label) for label in self.rows), default=6)
        self.left = 16 + (FONT * 1.6 if self.y_label else 0) + CHAR_W * min(label_chars, 40) + 8
        self.right = 20.0
        self.top = 34.0
        self.plot_w = self.width - self.left - self.right

    # -- coordinates ------------------------------------------------------------------------------------------

    def _layout(self) -> None:
        if self.legend_at == "right" and self.legend:
            self.right = 20 + 30 + CHAR_W * max(len(entry.label) for entry in self.legend)
        self.plot_w = self.width - self.left - self.right

    def sx(self, x: float) -> float:
        low, high = self.x_range
        return self.left + (x - low) / ((high - low) or 1) * self.plot_w

    def sy(self, y: float) -> float:
        low, high = self.y_range
        return self.top + self.plot_height - (y - low) / ((high - low) or 1) * self.plot_height

    # -- marks (data coordinates; drawn in the order added) ------------------------------------------------------

    def ticks(self, xs: Iterable[float], y: float, colour: str, half_px: float = 4.0, width: float = 0.8) -> None:
        """A vertical tick mark at each x on the line y (one path; marks on the same half pixel drawn once)."""
        self._layout()
        cy = self.sy(y)
        seen = sorted({round(self.sx(x) * 2) / 2 for x in xs})
        if seen:
            d = "".join(f"M{_n(px)} {_n(cy - half_px)}v{_n(2 * half_px)}" for px in seen)
            self.marks.append(f'<path d="{d}" stroke="{colour}" stroke-width="{width}" fill="none"/>')

    def line(self, points: Sequence[tuple[float, float]], colour: str, *, width: float = 1.2, step: bool = False,
             dash: str = "", opacity: float = 1.0) -> None:
        """A polyline (``step``: a step curve, each value held until the next x, like matplotlib's where="post")."""
        self._layout()
        if not points:
            return
        parts = [f"M{_n(self.sx(points[0][0]))} {_n(self.sy(points[0][1]))}"]
        last_px = None
        for index, (x, y) in enumerate(points[1:], start=1):
            px, py = _n(self.sx(x)), _n(self.sy(y))
            if step:
                # points on the same pixel column collapse into the last of them
                following = points[index + 1] if index + 1 < len(points) else None
                if following is not None and _n(self.sx(following[0])) == px:
                    continue
                parts.append(f"H{px}V{py}" if px != last_px else f"V{py}")
            else:
                parts.append(f"L{px} {py}")
            last_px = px
        extra = f' stroke-dasharray="{dash}"' if dash else ""
        extra += f' stroke-opacity="{opacity}"' if opacity != 1 else ""
        self.marks.append(f'<path d="{"".join(parts)}" stroke="{colour}" stroke-width="{width}" fill="none"{extra}/>')

    def marker(self, x: float, y: float, shape: str, colour: str, size: float = 5.0, opacity: float = 1.0) -> None:
        self._layout()
        self.marks.append(_marker(self.sx(x), self.sy(y), shape, colour, size, opacity))

    def vline(self, x: float, colour: str, *, dash: str = "", width: float = 1.0) -> None:
        self._layout()
        px = _n(self.sx(x))
        extra = f' stroke-dasharray="{dash}"' if dash else ""
        self.marks.append(f'<path d="M{px} {_n(self.top)}V{_n(self.top + self.plot_height)}" stroke="{colour}" '
                          f'stroke-width="{width}"{extra}/>')

    def rect(self, x: float, y: float, w: float, h: float, colour: str, opacity: float = 1.0) -> None:
        """A box from (x, y) of size (w, h) in data units."""
        self._layout()
        x0, x1 = sorted((self.sx(x), self.sx(x + w)))
        y0, y1 = sorted((self.sy(y), self.sy(y + h)))
        extra = f' fill-opacity="{opacity}"' if opacity != 1 else ""
        self.marks.append(f'<rect x="{_n(x0)}" y="{_n(y0)}" width="{_n(max(x1 - x0, 0.5))}" '
                          f'height="{_n(y1 - y0)}" fill="{colour}"{extra}/>')

    def band(self, xs: Sequence[float], lows: Sequence[float], highs: Sequence[float], colour: str,
             opacity: float = 0.2) -> None:
        """The area between two curves (matplotlib's fill_between)."""
        self._layout()
        if not xs:
            return
        upper = [f"{_n(self.sx(x))} {_n(self.sy(y))}" for x, y in zip(xs, highs)]
        lower = [f"{_n(self.sx(x))} {_n(self.sy(y))}" for x, y in zip(reversed(xs), reversed(lows))]
        self.marks.append(f'<path d="M{"L".join(upper + lower)}Z" fill="{colour}" fill-opacity="{opacity}"/>')

    def error_bar(self, x: float, low: float, high: float, colour: str, cap_px: float = 3.0) -> None:
        self._layout()
        px, y0, y1 = self.sx(x), self.sy(low), self.sy(high)
        self.marks.append(f'<path d="M{_n(px)} {_n(y0)}V{_n(y1)}M{_n(px - cap_px)} {_n(y0)}h{_n(2 * cap_px)}'
                          f'M{_n(px - cap_px)} {_n(y1)}h{_n(2 * cap_px)}" stroke="{colour}" stroke-width="1.2"/>')

    def text(self, x: float, y: float, text: str, colour: str = "#222", size: int = 10, anchor: str = "start") -> None:
        self._layout()
        self.marks.append(f'<text x="{_n(self.sx(x))}" y="{_n(self.sy(y) + size * 0.35)}" font-size="{size}" '
                          f'fill="{colour}" text-anchor="{anchor}">{_e(text)}</text>')

    def add_legend(self, label: str, colour: str, kind: str = "line", *, opacity: float = 1.0, dash: str = "") -> None:
        self.legend.append(LegendEntry(label, colour, kind, opacity, dash))

    # -- the whole -------------------------------------------------------------------------------------------------

    def svg(self) -> str:
        self._layout()
        top, bottom = self.top, self.top + self.plot_height
        left, right = self.left, self.left + self.plot_w
        out: list[str] = []
        # axes: grid, ticks and their labels
        if self.x_categories:
            x_ticks = [(float(i), label) for i, label in enumerate(self.x_categories)]
        else:
            x_ticks = [(v, tick_label(v)) for v in nice_ticks(*self.x_range) if self.x_range[0] <= v <= self.x_range[1]]
        if self.rows:
            y_ticks = [(float(i), label) for i, label in enumerate(self.rows)]
        else:
            y_ticks = [(v, tick_label(v)) for v in nice_ticks(*self.y_range, count=5)
                       if self.y_range[0] <= v <= self.y_range[1]]
        for value, label in x_ticks:
            px = _n(self.sx(value))
            if self.x_grid:
                out.append(f'<path d="M{px} {_n(top)}V{_n(bottom)}" stroke="#000" stroke-opacity="0.12"/>')
            out.append(f'<path d="M{px} {_n(bottom)}v4" stroke="#444"/>')
            out.append(f'<text x="{px}" y="{_n(bottom + 16)}" text-anchor="middle">{_e(label)}</text>')
        for value, label in y_ticks:
            py = _n(self.sy(value))
            if self.y_grid:
                out.append(f'<path d="M{_n(left)} {py}H{_n(right)}" stroke="#000" stroke-opacity="0.12"/>')
            out.append(f'<path d="M{_n(left)} {py}h-4" stroke="#444"/>')
            out.append(f'<text x="{_n(left - 7)}" y="{_n(float(py) + 4)}" text-anchor="end">{_e(label)}</text>')
        out.extend(self.marks)
        out.append(f'<rect x="{_n(left)}" y="{_n(top)}" width="{_n(self.plot_w)}" height="{_n(self.plot_height)}" '
                   f'fill="none" stroke="#444"/>')
        out.append(f'<text x="{_n((left + right) / 2)}" y="{_n(top - 12)}" text-anchor="middle" '
                   f'font-size="{self.title_size}">{_e(self.title)}</text>')
        height = bottom + 22
        if self.x_label:
            out.append(f'<text x="{_n((left + right) / 2)}" y="{_n(bottom + 34)}" text-anchor="middle">'
                       f'{_e(self.x_label)}</text>')
            height = bottom + 40
        if self.y_label:
            cy = (top + bottom) / 2
            out.append(f'<text x="16" y="{_n(cy)}" text-anchor="middle" transform="rotate(-90 16 {_n(cy)})">'
                       f'{_e(self.y_label)}</text>')
        if self.legend and self.legend_at == "right":
            y = (top + bottom) / 2 - 9 * (len(self.legend) - 1)
            for entry in self.legend:
                out.append(_legend_key(right + 14, y, entry))
                out.append(f'<text x="{_n(right + 40)}" y="{_n(y + 4)}" font-size="11">{_e(entry.label)}</text>')
                y += 18
        elif self.legend:
            widths = [30 + CHAR_W * 0.92 * len(entry.label) + 18 for entry in self.legend]
            per_row: list[list[int]] = [[]]
            row_w = 0.0
            for index, w in enumerate(widths):
                if per_row[-1] and row_w + w > self.width - 40:
                    per_row.append([])
                    row_w = 0.0
                per_row[-1].append(index)
                row_w += w
            y = height + 8
            for row in per_row:
                x = (self.width - sum(widths[i] for i in row)) / 2
                for index in row:
                    out.append(_legend_key(x + 10, y, self.legend[index]))
                    out.append(f'<text x="{_n(x + 28)}" y="{_n(y + 4)}" font-size="11">{_e(self.legend[index].label)}</text>')
                    x += widths[index]
                y += 18
            height = y
        return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_n(self.width)} {_n(height + 6)}" '
                f'width="{_n(self.width)}" height="{_n(height + 6)}" font-family="sans-serif" font-size="{FONT}" '
                f'fill="#222">\n' + "\n".join(out) + "\n</svg>")


def _marker(px: float, py: float, shape: str, colour: str, size: float, opacity: float = 1.0) -> str:
    r = size / 2
    extra = f' fill-opacity="{opacity}"' if opacity != 1 else ""
    if shape == "o":
        return f'<circle cx="{_n(px)}" cy="{_n(py)}" r="{_n(r)}" fill="{colour}"{extra}/>'
    if shape == "s":
        return f'<rect x="{_n(px - r)}" y="{_n(py - r)}" width="{_n(size)}" height="{_n(size)}" fill="{colour}"{extra}/>'
    if shape == "^":
        return f'<path d="M{_n(px)} {_n(py - r)}L{_n(px + r)} {_n(py + r)}H{_n(px - r)}Z" fill="{colour}"{extra}/>'
    if shape == "v":
        return f'<path d="M{_n(px)} {_n(py + r)}L{_n(px + r)} {_n(py - r)}H{_n(px - r)}Z" fill="{colour}"{extra}/>'
    raise ValueError(f"unknown marker {shape!r}")


def _legend_key(x: float, y: float, entry: LegendEntry) -> str:
    if entry.kind == "line":
        dash = f' stroke-dasharray="{entry.dash}"' if entry.dash else ""
        return f'<path d="M{_n(x - 8)} {_n(y)}h16" stroke="{entry.colour}" stroke-width="1.5"{dash}/>'
    if entry.kind == "tick":
        return f'<path d="M{_n(x)} {_n(y - 5)}v10" stroke="{entry.colour}" stroke-width="1.2"/>'
    if entry.kind == "box":
        extra = f' fill-opacity="{entry.opacity}"' if entry.opacity != 1 else ""
        return f'<rect x="{_n(x - 8)}" y="{_n(y - 5)}" width="16" height="10" fill="{entry.colour}"{extra}/>'
    return _marker(x, y, entry.kind, entry.colour, 7, entry.opacity)
