"""A sweep's statistics: per variant the mean of each measure over the seeds with a 95% confidence interval, and the
paired difference to the baseline variant (same seeds: common random numbers) with its interval; printed as a
summary and drawn into a self-contained HTML report (cosim.report's figure helpers).

Method: Student's t interval, ``mean ± t(0.975, n-1) · s / √n`` with ``s`` the sample standard deviation (n-1)
over the seeds; for a difference, the same interval over the per-seed differences (a paired t interval); the t
quantile and the interval are cosim.stats' (stdlib only, no SciPy). One seed gives a mean without an interval.
"""

from __future__ import annotations

import csv
import html
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from cosim.stats import Interval, t_interval

if TYPE_CHECKING:
    from cosim.sweep import Plan

METHOD = ("95% confidence intervals: Student's t over the seeds, mean ± t(0.975, n−1)·s/√n; differences to the "
          "baseline are paired by seed (common random numbers) and get the same t interval over the per-seed "
          "differences.")
NOT_MEASURES = {"run", "variant", "seed", "status", "trace_sha256", "error"}


# -- the summary ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One measure of one variant: its interval over the seeds, and its paired difference to the baseline."""

    variant: str
    measure: str
    values: tuple[tuple[int, float], ...]  # (seed, value) of the variant's completed runs
    interval: Interval | None
    difference: Interval | None  # None for the baseline itself, or without paired seeds


def measures_of(table: Sequence[Mapping[str, Any]], parameters: Iterable[str]) -> list[str]:
    """The measure columns, in the table's order."""
    skip = NOT_MEASURES | set(parameters)
    names: dict[str, None] = {}
    for row in table:
        for key, value in row.items():
            if key not in skip and isinstance(value, (int, float)) and not isinstance(value, bool):
                names.setdefault(key, None)
    return sorted(names)


def summarise(sweep: Plan, table: Sequence[Mapping[str, Any]]) -> list[Cell]:
    """Every measure of every variant, over the runs that completed (status ok)."""
    by_variant: dict[str, dict[int, Mapping[str, Any]]] = defaultdict(dict)
    for row in table:
        if row.get("status") == "ok":
            by_variant[row["variant"]][row["seed"]] = row
    cells = []
    baseline = by_variant.get(sweep.baseline, {})
    for measure in measures_of(table, sweep.parameters):
        for variant in sweep.variants:
            runs = by_variant.get(variant.id, {})
            values = tuple((seed, float(row[measure])) for seed, row in sorted(runs.items()) if _has(row, measure))
            difference = None
            if variant.id != sweep.baseline:
                paired = [value - float(baseline[seed][measure]) for seed, value in values
                          if seed in baseline and _has(baseline[seed], measure)]
                difference = t_interval(paired)
            cells.append(Cell(variant.id, measure, values, t_interval([v for _, v in values]), difference))
    return cells


def _has(row: Mapping[str, Any], measure: str) -> bool:
    value = row.get(measure)
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def varying(cells: Sequence[Cell]) -> list[str]:
    """The measures whose values are not all the same (the others say nothing about the parameters)."""
    seen: dict[str, set[float]] = defaultdict(set)
    for cell in cells:
        seen[cell.measure].update(value for _, value in cell.values)
    return [measure for measure, values in seen.items() if len(values) > 1]


def headline(cells: Sequence[Cell]) -> list[str]:
    """The measures the printed summary and the charts show: those that vary, without the per-route columns."""
    return [measure for measure in varying(cells) if "[" not in measure]


def write_summary_csv(out: Path, cells: Sequence[Cell]) -> Path:
    """``summary.csv``: one row per variant and measure: n, mean, the interval, the paired difference."""
    path = out / "summary.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["variant", "measure", "n", "mean", "ci_low", "ci_high", "diff_n", "diff_mean", "diff_low",
                         "diff_high"])
        for cell in cells:
            interval, difference = cell.interval, cell.difference
            writer.writerow([cell.variant, cell.measure, *_interval_cells(interval), *_interval_cells(difference)])
    return path


def _interval_cells(interval: Interval | None) -> list[Any]:
    if interval is None:
        return ["", "", "", ""]
    return [interval.n, repr(interval.mean), "" if interval.low is None else repr(interval.low),
            "" if interval.high is None else repr(interval.high)]


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"


def show(interval: Interval | None) -> str:
    if interval is None:
        return "-"
    if interval.low is None:
        return f"{fmt(interval.mean)} (n=1)"
    return f"{fmt(interval.mean)} [{fmt(interval.low)}, {fmt(interval.high)}]"


def print_summary(sweep: Plan, table: Sequence[Mapping[str, Any]], cells: Sequence[Cell], out: TextIO) -> None:
    ok = sum(1 for row in table if row.get("status") == "ok")
    out.write(f"  {ok} of {len(table)} run(s) complete. {METHOD}\n")
    labels = {variant.id: f"{variant.id} {variant.label()}" for variant in sweep.variants}
    width = max((len(label) for label in labels.values()), default=0)
    by_measure: dict[str, list[Cell]] = defaultdict(list)
    for cell in cells:
        by_measure[cell.measure].append(cell)
    shown = headline(cells)
    for measure in shown:
        out.write(f"  {measure}: mean [95% CI]; Δ = paired difference to {sweep.baseline}\n")
        for cell in by_measure[measure]:
            delta = f"   Δ {show(cell.difference)}" if cell.variant != sweep.baseline else "   (baseline)"
            out.write(f"    {labels[cell.variant]:<{width}}  {show(cell.interval):<32}{delta}\n")
    hidden = len(varying(cells)) - len(shown)
    if hidden:
        out.write(f"  ({hidden} per-route measure(s) more in summary.csv and the report)\n")


# -- the HTML report ------------------------------------------------------------------------------------------------


def _series(sweep: Plan, parameter: str) -> dict[tuple[tuple[str, Any], ...], list[Any]]:
    """For a chart against ``parameter``: one series per combination of the other parameters, holding the
    variants in the order of ``parameter``'s values."""
    series: dict[tuple[tuple[str, Any], ...], list[Any]] = defaultdict(list)
    for variant in sweep.variants:
        others = tuple((path, value) for path, value in variant.parameters if path != parameter)
        series[others].append(variant)
    return series


def chart(sweep: Plan, cells: Sequence[Cell], measure: str, parameter: str | None) -> str:
    """``measure`` against ``parameter``'s values: the mean per variant with its 95% interval as a band (and bar),
    one series per combination of the other parameters, and every seed's value as a point."""
    from cosim.charts import CYCLE, Chart

    by_variant = {cell.variant: cell for cell in cells if cell.measure == measure}
    groups: dict[tuple[tuple[str, Any], ...], list[Any]]
    if parameter is None:
        groups = {(): list(sweep.variants)}
        ticks = [variant.id for variant in sweep.variants]
    else:
        groups = _series(sweep, parameter)
        ticks = list(dict.fromkeys(_tick(value) for variant in sweep.variants
                                   for path, value in variant.parameters if path == parameter))
    spread = 0.25 / max(1, len(groups))
    drawn: list[tuple[str, str | None, list[float], list[float], list[float], list[float], list[list[float]]]] = []
    for index, (others, variants) in enumerate(groups.items()):
        offset = (index - (len(groups) - 1) / 2) * spread
        xs: list[float] = []
        means: list[float] = []
        lows: list[float] = []
        highs: list[float] = []
        seeds: list[list[float]] = []
        label = ", ".join(f"{path.rsplit('.', 1)[-1]}={_tick(value)}" for path, value in others) or None
        for position, variant in enumerate(variants):
            cell = by_variant.get(variant.id)
            if cell is None or cell.interval is None:
                continue
            xs.append((ticks.index(_tick(dict(variant.parameters)[parameter])) if parameter else position) + offset)
            means.append(cell.interval.mean)
            lows.append(cell.interval.low if cell.interval.low is not None else cell.interval.mean)
            highs.append(cell.interval.high if cell.interval.high is not None else cell.interval.mean)
            seeds.append([value for _, value in cell.values])
        if xs:
            drawn.append((CYCLE[index % len(CYCLE)], label, xs, means, lows, highs, seeds))
    values = [v for *_, lows, highs, seeds in drawn for v in (*lows, *highs, *(x for s in seeds for x in s))]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    pad = (high - low) * 0.08 or abs(high) * 0.1 or 1.0
    figure = Chart(f"{measure} (mean, 95% CI band, seeds as points)", (-0.5, len(ticks) - 0.5), (low - pad, high + pad),
                   width=640, plot_height=220, x_label=parameter or "variant", y_label=measure, x_categories=ticks,
                   y_grid=True, title_size=11)
    for colour, label, xs, means, lows, highs, seeds in drawn:
        figure.band(xs, lows, highs, colour)
        for x, seed_values in zip(xs, seeds):
            for value in seed_values:
                figure.marker(x + spread * 0.3, value, "o", colour, size=3.5, opacity=0.5)
        for x, lo, hi in zip(xs, lows, highs):
            figure.error_bar(x, lo, hi, colour)
        figure.line(list(zip(xs, means)), colour)
        for x, mean in zip(xs, means):
            figure.marker(x, mean, "o", colour, size=6)
        if len(groups) > 1 and label:
            figure.add_legend(label, colour)
    return figure.svg()


def _tick(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


def render(sweep: Plan, table: Sequence[Mapping[str, Any]], cells: Sequence[Cell]) -> str:
    from cosim.report import CSS, html_table

    e = html.escape
    parts = [f"<h1>cosim sweep: {e(sweep.name)}</h1>",
             (f"<p class=sub>scenario <code>{e(str(sweep.scenario))}</code>; {len(sweep.variants)} variant(s) × "
              f"{len(sweep.seeds)} seed(s) ({e(_seeds_text(sweep.seeds))}), the same seeds in every variant</p>"),
             f"<p class=note>{e(METHOD)}</p>"]
    failed = [row for row in table if row.get("status") != "ok"]
    ok = len(table) - len(failed)
    parts.append(f'<p class={"failed" if failed else "ok"}>{ok} of {len(table)} run(s) complete'
                 + (f"; {len(failed)} failed (below)" if failed else "") + ".</p>")
    parts.append("<h2>Variants</h2>" + html_table(
        ("variant", *sweep.parameters), [(v.id, *(_tick(value) for _, value in v.parameters)) for v in sweep.variants]))
    shown = headline(cells)
    by_key = {(cell.variant, cell.measure): cell for cell in cells}
    for measure in shown:
        parts.append(f"<h2>{e(measure)}</h2>")
        swept: list[str | None] = [*sweep.parameters] or [None]
        for parameter in swept:
            parts.append(f"<figure>{chart(sweep, cells, measure, parameter)}</figure>")
        rows: list[tuple[Any, ...]] = []
        for variant in sweep.variants:
            cell = by_key[(variant.id, measure)]
            rows.append((f"{variant.id} {variant.label()}", cell.interval.n if cell.interval else 0,
                         show(cell.interval), "baseline" if variant.id == sweep.baseline else show(cell.difference)))
        parts.append(html_table(("variant", "n", "mean [95% CI]", f"Δ to {sweep.baseline} [95% CI]"), rows,
                                numeric=(1,)))
    rest = [measure for measure in varying(cells) if measure not in shown]
    if rest:
        parts.append("<h2>Per-route measures</h2>")
        rows = [(measure, *(show(by_key[(v.id, measure)].interval) for v in sweep.variants)) for measure in rest]
        parts.append(html_table(("measure", *(v.id for v in sweep.variants)), rows))
    parts.append("<h2>Runs</h2>")
    run_rows = [(row["run"], row["seed"], row["status"], str(row.get("trace_sha256", ""))[:16], row.get("error", ""))
                for row in table]
    parts.append(html_table(("run", "seed", "status", "trace SHA-256", "error"), run_rows, numeric=(1,)))
    parts.append("<p class=note>Each run's scenario file and trace are in <code>runs/&lt;run&gt;/</code>; "
                 "<code>cosim up runs/&lt;run&gt;/scenario.yaml</code> repeats it with the same trace hash. Every "
                 "number is in <code>results.csv</code> (per run) and <code>summary.csv</code> (per variant).</p>")
    body = "\n".join(parts)
    return (f"<!DOCTYPE html>\n<html lang=en>\n<head>\n<meta charset=utf-8>\n<title>cosim sweep: {e(sweep.name)}"
            f"</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def _seeds_text(seeds: Sequence[int]) -> str:
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))) and len(seeds) > 2:
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(str(seed) for seed in seeds)


def write_report(sweep: Plan, table: Sequence[Mapping[str, Any]], cells: Sequence[Cell], out: TextIO) -> Path:
    """``report.html`` in the sweep's directory."""
    path = sweep.out / "report.html"
    path.write_text(render(sweep, table, cells), encoding="utf-8")
    return path
