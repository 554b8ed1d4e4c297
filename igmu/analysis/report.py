"""Pictures and reports of Pareto fronts: PNG plots, self-contained HTML plots and the compare report.

Two audiences, two formats. A PNG (matplotlib, Agg canvas, no pyplot state, no display needed) goes
into Markdown and the MLflow UI's image preview. An HTML page carries the same plot as inline SVG
whose points show their trial, hyperparameters and scores on hover (SVG `<title>` tooltips): no
JavaScript library, no network, so it opens offline, from an MLflow artifact or a CI download.

In every plot dominated trials are faded, the front is drawn solid and connected in order of the
x objective, the knee point is ringed and early-stopped trials (only there with --include-stopped)
are hollow.
"""

from __future__ import annotations

import html
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from igmu.analysis.frontier import (
    AlgorithmResult,
    Frontier,
    SweepSource,
    format_number,
    format_params,
    format_value,
    front_rows,
    leaderboard,
    objective_list,
    trial_params,
    trial_scores,
)
from igmu.analysis.standing import TIED, defaults_rows, standing_table, tuned_rows
from igmu.metrics.base import ASPECTS

# matplotlib's tab10, so PNG and SVG colour an algorithm the same way.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")
DOMINATED_OPACITY = 0.25
SVG_WIDTH, SVG_HEIGHT = 720, 480
SVG_MARGIN = {"left": 70, "right": 20, "top": 40, "bottom": 60}
# With several series the legend sits right of the plot, where no point of a front can hide under it.
SVG_LEGEND_WIDTH = 140
AXIS_PADDING_FRACTION = 0.05
# Used instead of the data range when every point has the same value on an axis.
FLAT_AXIS_HALF_WIDTH = 0.05
TICKS_PER_AXIS = 6
ROW_ORDER_AXIS = "trial (row order)"


@dataclass
class PlotPoint:
    x: float
    y: float
    on_front: bool
    knee: bool
    stopped: bool
    hover: str


@dataclass
class PlotSeries:
    """One colour in a plot: all trials of a sweep, or of one algorithm in a comparison."""

    name: str
    color: str
    points: list[PlotPoint]

    @property
    def front(self) -> list[PlotPoint]:
        return sorted((p for p in self.points if p.on_front), key=lambda p: (p.x, p.y))

    @property
    def dominated(self) -> list[PlotPoint]:
        return [p for p in self.points if not p.on_front]


# --- from fronts to plot data ----------------------------------------------------------------------


def axis_labels(frontier: Frontier) -> tuple[str, str]:
    """The first two objectives, with their direction; one objective is plotted against row order."""
    labels = [f"{name} ({direction})" for name, direction in zip(frontier.objectives, frontier.directions)]
    return (labels[0], labels[1]) if len(labels) > 1 else (labels[0], ROW_ORDER_AXIS)


def frontier_series(frontier: Frontier, name: str, color: str = PALETTE[0]) -> PlotSeries:
    scored = frontier.scored
    xs = scored[frontier.objectives[0]].to_numpy(dtype=float)
    ys = (scored[frontier.objectives[1]].to_numpy(dtype=float) if len(frontier.objectives) > 1
          else [float(i) for i in range(len(scored))])
    points = []
    for position, (_, row) in enumerate(scored.iterrows()):
        on_front, knee = bool(frontier.on_front[position]), position == frontier.knee
        points.append(PlotPoint(float(xs[position]), float(ys[position]), on_front, knee,
                                bool(row["early_stopped"]), hover_text(row, frontier.objectives, on_front, knee)))
    return PlotSeries(name, color, points)


def hover_text(row, objectives: Sequence[str], on_front: bool, knee: bool) -> str:
    """What a reader needs to pick a trial: where it came from, its scores and hyperparameters."""
    origin = f"trial {row['trial_id']} ({row.get('algorithm', '?')}"
    origin += f", sweep {row['sweep']})" if "sweep" in row.index else ")"
    status = [label for label, applies in (("Pareto front", on_front), ("knee", knee),
                                           ("early-stopped", bool(row["early_stopped"]))) if applies]
    lines = [origin] + ([", ".join(status)] if status else [])
    lines += [f"{name}: {format_number(value)}" for name, value in trial_scores(row, objectives).items()]
    lines += [f"{key} = {format_value(value)}" for key, value in trial_params(row).items()]
    return "\n".join(lines)


# --- PNG ------------------------------------------------------------------------------------------


def write_png(series: Sequence[PlotSeries], labels: tuple[str, str], title: str, path: Path) -> Path:
    """Render the plot with matplotlib's Agg canvas (no pyplot: no global state, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, 5.2), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for one in series:
        _draw_series_png(axes, one, label_prefix=f"{one.name} " if len(series) > 1 else "")
    axes.set_xlabel(labels[0])
    axes.set_ylabel(labels[1])
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, bbox_inches="tight")
    return path


def _draw_series_png(axes, series: PlotSeries, label_prefix: str) -> None:
    dominated, front = series.dominated, series.front
    if dominated:
        axes.scatter([p.x for p in dominated], [p.y for p in dominated], s=22, color=series.color,
                     alpha=DOMINATED_OPACITY, label=f"{label_prefix}dominated")
    if front:
        axes.plot([p.x for p in front], [p.y for p in front], "-", color=series.color, linewidth=1.5)
        filled = [p for p in front if not p.stopped]
        hollow = [p for p in front if p.stopped]
        axes.scatter([p.x for p in filled], [p.y for p in filled], s=36, color=series.color, zorder=3,
                     label=f"{label_prefix}front")
        if hollow:
            axes.scatter([p.x for p in hollow], [p.y for p in hollow], s=36, facecolors="white",
                         edgecolors=series.color, zorder=3, label=f"{label_prefix}front (early-stopped)")
    for knee in (p for p in series.points if p.knee):
        axes.scatter([knee.x], [knee.y], s=180, facecolors="none", edgecolors=series.color, linewidths=2,
                     zorder=4, label=f"{label_prefix}knee")


# --- SVG ------------------------------------------------------------------------------------------


@dataclass
class _Scale:
    """Maps data values to pixels along one axis."""

    low: float
    high: float
    pixel_low: float
    pixel_high: float

    def __call__(self, value: float) -> float:
        return self.pixel_low + (value - self.low) / (self.high - self.low) * (self.pixel_high - self.pixel_low)


def _padded_range(values: Sequence[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    if high == low:
        return low - FLAT_AXIS_HALF_WIDTH, high + FLAT_AXIS_HALF_WIDTH
    pad = (high - low) * AXIS_PADDING_FRACTION
    return low - pad, high + pad


def _ticks(low: float, high: float) -> list[float]:
    from matplotlib.ticker import MaxNLocator

    return [float(t) for t in MaxNLocator(nbins=TICKS_PER_AXIS).tick_values(low, high) if low <= t <= high]


def svg_plot(series: Sequence[PlotSeries], labels: tuple[str, str], title: str) -> str:
    """The plot as one inline `<svg>` element; every point's `<title>` is its hover tooltip."""
    points = [p for one in series for p in one.points]
    right = SVG_WIDTH - SVG_MARGIN["right"] - (SVG_LEGEND_WIDTH if len(series) > 1 else 0)
    x = _Scale(*_padded_range([p.x for p in points]), SVG_MARGIN["left"], right)
    y = _Scale(*_padded_range([p.y for p in points]), SVG_HEIGHT - SVG_MARGIN["bottom"], SVG_MARGIN["top"])
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {SVG_WIDTH} {SVG_HEIGHT}" '
             f'width="{SVG_WIDTH}" height="{SVG_HEIGHT}" font-family="sans-serif" font-size="12" class="pareto" '
             f'role="img" aria-label="{_esc(title)}">',
             f'<rect width="{SVG_WIDTH}" height="{SVG_HEIGHT}" fill="#ffffff"/>',
             f'<text x="{SVG_WIDTH / 2}" y="22" text-anchor="middle" font-weight="bold" class="title">{_esc(title)}</text>',
             *_svg_axes(x, y, labels)]
    for one in series:
        parts += _svg_series(one, x, y)
    if len(series) > 1:
        parts += _svg_legend(series, left=right + 16)
    parts.append("</svg>")
    return "\n".join(parts)


def _svg_axes(x: _Scale, y: _Scale, labels: tuple[str, str]) -> list[str]:
    bottom, left = y.pixel_low, x.pixel_low
    parts = [f'<rect x="{left}" y="{y.pixel_high}" width="{x.pixel_high - left}" height="{bottom - y.pixel_high}" '
             'fill="none" stroke="#999999" class="frame"/>']
    for tick in _ticks(x.low, x.high):
        px = x(tick)
        parts.append(f'<line x1="{px:.1f}" y1="{y.pixel_high}" x2="{px:.1f}" y2="{bottom}" stroke="#eeeeee" class="grid"/>')
        parts.append(f'<text x="{px:.1f}" y="{bottom + 16}" text-anchor="middle">{tick:g}</text>')
    for tick in _ticks(y.low, y.high):
        py = y(tick)
        parts.append(f'<line x1="{left}" y1="{py:.1f}" x2="{x.pixel_high}" y2="{py:.1f}" stroke="#eeeeee" class="grid"/>')
        parts.append(f'<text x="{left - 6}" y="{py + 4:.1f}" text-anchor="end">{tick:g}</text>')
    parts.append(f'<text x="{(left + x.pixel_high) / 2}" y="{SVG_HEIGHT - 18}" text-anchor="middle" '
                 f'class="label">{_esc(labels[0])}</text>')
    parts.append(f'<text x="18" y="{(y.pixel_high + bottom) / 2}" text-anchor="middle" class="label" '
                 f'transform="rotate(-90 18 {(y.pixel_high + bottom) / 2})">{_esc(labels[1])}</text>')
    return parts


def _svg_series(series: PlotSeries, x: _Scale, y: _Scale) -> list[str]:
    color = series.color
    parts = [f'<g class="series" data-name="{_esc(series.name)}">']
    for point in series.dominated:
        parts.append(_svg_point(point, x, y, color, "dominated", DOMINATED_OPACITY))
    front = series.front
    if len(front) > 1:
        coordinates = " ".join(f"{x(p.x):.1f},{y(p.y):.1f}" for p in front)
        parts.append(f'<polyline points="{coordinates}" fill="none" stroke="{color}" stroke-width="1.8" '
                     'class="front-line"/>')
    for point in front:
        parts.append(_svg_point(point, x, y, color, "front", 1.0))
    parts.append("</g>")
    return parts


def _svg_point(point: PlotPoint, x: _Scale, y: _Scale, color: str, kind: str, opacity: float) -> str:
    fill = "#ffffff" if point.stopped else color
    ring = (f'<circle cx="{x(point.x):.1f}" cy="{y(point.y):.1f}" r="10" fill="none" stroke="{color}" '
            'stroke-width="2" class="knee"/>' if point.knee else "")
    classes = " ".join([kind, *(["stopped"] if point.stopped else []), *(["knee-point"] if point.knee else [])])
    return (f'{ring}<circle cx="{x(point.x):.1f}" cy="{y(point.y):.1f}" r="{5 if point.on_front else 4}" '
            f'fill="{fill}" stroke="{color}" stroke-width="1.5" opacity="{opacity}" class="{classes}">'
            f"<title>{_esc(point.hover)}</title></circle>")


def _svg_legend(series: Sequence[PlotSeries], left: float) -> list[str]:
    parts = []
    for index, one in enumerate(series):
        top = SVG_MARGIN["top"] + 8 + 18 * index
        parts.append(f'<circle cx="{left}" cy="{top}" r="5" fill="{one.color}"/>'
                     f'<text x="{left + 10}" y="{top + 4}">{_esc(one.name)}</text>')
    return parts


def _esc(text: str) -> str:
    return html.escape(str(text), quote=True)


# --- pages ----------------------------------------------------------------------------------------

PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 1100px; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: left; }
th { background: #f3f3f3; }
svg.pareto circle.dominated:hover, svg.pareto circle.front:hover { stroke: #000; stroke-width: 3; opacity: 1; }
img.grid { max-width: 100%; border: 1px solid #ddd; }
"""


def html_page(title: str, body: str) -> str:
    """A self-contained page: inline CSS, no script, no external resource."""
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{_esc(title)}</title>\n'
            f"<style>{PAGE_STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def html_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_esc(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells):
        return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(headers), line(["---"] * len(headers)), *(line(row) for row in rows)])


# --- igmu pareto ----------------------------------------------------------------------------------


def plot_stem(frontier: Frontier) -> str:
    """File name stem that says which objectives a plot shows, so plots for other objectives coexist."""
    return "pareto_" + "-".join(frontier.objectives)


def write_pareto_plots(frontier: Frontier, out_dir: Path, label: str) -> list[Path]:
    """The sweep's Pareto plot as PNG and as interactive HTML; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"Pareto front of {label}: {objective_list(frontier)}"
    series = [frontier_series(frontier, label)]
    labels = axis_labels(frontier)
    png = write_png(series, labels, title, out_dir / f"{plot_stem(frontier)}.png")
    headers, rows = front_rows(frontier)
    body = (f"<h1>{_esc(title)}</h1>\n"
            f"<p>{int(frontier.on_front.sum())} of {len(frontier.scored)} scored trials on the front; "
            f"hypervolume {format_number(frontier.hypervolume)}; knee trial {_esc(frontier.knee_trial)}. "
            "Hover a point for its hyperparameters and scores; faded points are dominated.</p>\n"
            f"{svg_plot(series, labels, title)}\n<h2>Front</h2>\n{html_table(headers, rows)}")
    page = out_dir / f"{plot_stem(frontier)}.html"
    page.write_text(html_page(title, body), encoding="utf-8")
    return [png, page]


# --- igmu compare ---------------------------------------------------------------------------------

FRONTS_PNG = "fronts.png"
GRIDS_DIR = "grids"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text) or "algorithm"


def _copy_knee_grids(results: Sequence[AlgorithmResult], out_dir: Path) -> dict[str, str]:
    """Copy each knee trial's image grid next to the report; returns algorithm -> relative path."""
    copied = {}
    for result in results:
        if result.knee_grid is None:
            continue
        relative = f"{GRIDS_DIR}/{_safe_name(result.algorithm)}.png"
        (out_dir / GRIDS_DIR).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(result.knee_grid, out_dir / relative)
        copied[result.algorithm] = relative
    return copied


def leaderboard_table(rows: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    headers = ["rank", "algorithm", "scored trials", "front size", "hypervolume",
               *(f"best {aspect}" for aspect in ASPECTS), "median efficiency_seconds"]
    body = [[str(rank), row["algorithm"], str(row["scored_trials"]), str(row["front_size"]),
             format_number(row["hypervolume"]), *(format_number(row["best_front"][a]) for a in ASPECTS),
             format_number(row["median_efficiency_seconds"], digits=2)]
            for rank, row in enumerate(rows, start=1)]
    return headers, body


def knee_table(rows: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    headers = ["algorithm", "sweep", "knee trial", *ASPECTS, "hyperparameters"]
    body = [[row["algorithm"], str(row["knee"]["sweep"]), str(row["knee"]["trial_id"]),
             *(format_number(row["knee"]["scores"][a]) for a in ASPECTS), format_params(row["knee"]["params"])]
            for row in rows if row["knee"] is not None]
    return headers, body


def write_compare_report(results: Sequence[AlgorithmResult], sources: Sequence[SweepSource],
                         out_dir: Path) -> dict:
    """Write report.md, report.html, fronts.png and the knee grids under `out_dir`; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    frontier = results[0].frontier
    series = [frontier_series(r.frontier, r.algorithm, PALETTE[i % len(PALETTE)]) for i, r in enumerate(results)]
    labels = axis_labels(frontier)
    sweeps = ", ".join(source.label for source in sources)
    title = f"Pareto fronts per algorithm ({sweeps})"
    write_png(series, labels, title, out_dir / FRONTS_PNG)
    grids = _copy_knee_grids(results, out_dir)
    rows = leaderboard(results)
    standings = {"defaults": defaults_rows(sources), "tuned": tuned_rows(results, sources)}
    (out_dir / REPORT_MD).write_text(_markdown_report(rows, frontier, sweeps, grids, standings), encoding="utf-8")
    (out_dir / REPORT_HTML).write_text(_html_report(rows, frontier, sweeps, grids, svg_plot(series, labels, title),
                                                    standings), encoding="utf-8")
    return {"markdown": str(out_dir / REPORT_MD), "html": str(out_dir / REPORT_HTML),
            "fronts_png": str(out_dir / FRONTS_PNG), "grids": {k: str(out_dir / v) for k, v in grids.items()},
            "leaderboard": rows, **standings}


# Why the two held-out tables exist, said once for the Markdown and the HTML report.
STANDING_NOTE = (f"Both tables score the held-out test split, which no trial saw. {TIED} marks a score whose 95% "
                 "interval overlaps the best score's in its table: the gap is within sampling noise.")
DEFAULTS_NOTE = "Each algorithm run once at its published defaults (the sweep's defaults runs)."
TUNED_NOTE = ("Each algorithm's front member (on validation scores) that adds most to its front's hypervolume, "
              "with the trials the search spent on the algorithm and their seconds.")


def standing_sections(standings: dict, heading, table, paragraph) -> list[str]:
    """The defaults and tuned tables, in the report's format (Markdown or HTML helpers)."""
    parts = [heading("Held-out test split: defaults beside tuned"), paragraph(STANDING_NOTE)]
    for name, tuned, note in (("defaults", False, DEFAULTS_NOTE), ("tuned", True, TUNED_NOTE)):
        parts.append(heading(f"{name.capitalize()} (test split)", 3))
        if standings[name]:
            parts += [paragraph(note), table(*standing_table(standings[name], tuned))]
        else:
            parts.append(paragraph("None: the sweeps ran no defaults runs (eval.defaults)." if name == "defaults"
                                   else "None."))
    return parts


def _intro(frontier: Frontier, sweeps: str) -> str:
    return (f"Sweeps: {sweeps}. Objectives: {objective_list(frontier)}. Each algorithm's hypervolume is that of "
            "its own front; best values are over its front trials; the knee is its most balanced front trial.")


def _markdown_report(rows: Sequence[dict], frontier: Frontier, sweeps: str, grids: dict[str, str],
                     standings: dict) -> str:
    held_out = standing_sections(standings, lambda text, level=2: "#" * level + f" {text}\n",
                                 lambda h, b: markdown_table(h, b) + "\n", lambda text: text + "\n")
    lines = ["# Algorithm comparison", "", _intro(frontier, sweeps), "", "## Leaderboard", "",
             markdown_table(*leaderboard_table(rows)), "", *held_out, "## Knee points", "",
             markdown_table(*knee_table(rows)), "", "## Fronts", "", f"![Pareto fronts per algorithm]({FRONTS_PNG})",
             "", "## Knee-point image grids", ""]
    for row in rows:
        if row["algorithm"] in grids:
            lines += [f"### {row['algorithm']} (trial {row['knee']['trial_id']})", "",
                      f"![{row['algorithm']} knee grid]({grids[row['algorithm']]})", ""]
        else:
            lines += [f"### {row['algorithm']}", "", "No image grid on disk for its knee trial.", ""]
    return "\n".join(lines)


def _html_report(rows: Sequence[dict], frontier: Frontier, sweeps: str, grids: dict[str, str], svg: str,
                 standings: dict) -> str:
    held_out = standing_sections(standings, lambda text, level=2: f"<h{level}>{_esc(text)}</h{level}>",
                                 html_table, lambda text: f"<p>{_esc(text)}</p>")
    parts = ["<h1>Algorithm comparison</h1>", f"<p>{_esc(_intro(frontier, sweeps))}</p>",
             "<h2>Leaderboard</h2>", html_table(*leaderboard_table(rows)), *held_out,
             "<h2>Knee points</h2>", html_table(*knee_table(rows)),
             f'<h2>Fronts</h2>\n<p>Hover a point for its hyperparameters and scores (static image: '
             f'<a href="{FRONTS_PNG}">{FRONTS_PNG}</a>).</p>', svg, "<h2>Knee-point image grids</h2>"]
    for row in rows:
        if row["algorithm"] in grids:
            parts.append(f"<h3>{_esc(row['algorithm'])} (trial {_esc(row['knee']['trial_id'])})</h3>"
                         f'<img class="grid" src="{_esc(grids[row["algorithm"]])}" '
                         f'alt="{_esc(row["algorithm"])} knee-point image grid">')
        else:
            parts.append(f"<h3>{_esc(row['algorithm'])}</h3><p>No image grid on disk for its knee trial.</p>")
    return html_page("Algorithm comparison", "\n".join(parts))
