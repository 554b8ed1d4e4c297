"""The comparison UI, checked in a real browser: a tiny real sweep, a real `mlflow server` on its
SQLite store and headless Chromium (driven by Playwright) looking at what a user looks at — the
experiment's runs table with the trials and their five aspects, MLflow's compare view of two
trials, and the HTML report `igmu compare` writes.

Every check waits for text or an element (the MLflow UI is a React app that loads its JavaScript
and then its data), never sleeps a fixed time for the page, and says on failure what it looked for
and what the page showed. Screenshots go to a temporary folder, or to $IGMU_SCREENSHOTS_DIR (how the ones in
docs/screenshots/ were made: `IGMU_SCREENSHOTS_DIR=docs/screenshots pytest tests/test_browser.py`).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap
import urllib.parse
from pathlib import Path

import pytest
from test_cluster_job import free_port, launch, stop, wait_for
from test_sweep import TINY_BUDGETS

from igmu.cli.main import main
from igmu.metrics.base import ASPECTS

# A trial run's final scores are logged per prompt split: the validation ones (val_forgetting, ...).
SCORE_METRICS = [f"val_{aspect}" for aspect in ASPECTS]
from igmu.sweep.tracking import PARENT_TAG

pytestmark = [pytest.mark.slow, pytest.mark.integration]

BIN = Path(sys.executable).parent
SWEEP = "ui-tiny"
TRIALS = 3
# Headless Chromium on a machine without a display or outside network: no sandbox (containers), no GPU,
# and none of the background fetches (component updates, sync, QUIC) whose refused connections stall it.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1280, "height": 800}
# The UI loads megabytes of JavaScript before it asks the server for runs; on 2 busy cores that took
# up to 20 s, so every wait may take a minute before it fails.
UI_TIMEOUT_MS = 60_000
# MLflow 3.x opens an experiment on its GenAI traces overview unless the URL (or the toggle a user
# clicked before, kept in the browser's localStorage) says the experiment is about model training.
TRAINING_VIEW = {"workflowType": "machine_learning"}
# The experiment tag MLflow's UI reads for the kind of an experiment, and its value for model training
# (`ExperimentKind.CUSTOM_MODEL_DEVELOPMENT` in the UI's bundle; the Python package has no constant).
# In 3.17 the tag alone does not change where an experiment opens: the URL above still must say so.
EXPERIMENT_KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
DRAG_STEP_PX, DRAG_STEP_MS = 5, 30
MAX_GRID_SCROLLS, GRID_SCROLL_PX, GRID_SETTLE_MS = 20, 135, 100
SHOWN_SCORE_TOLERANCE = 1e-3
SCREENSHOTS_ENV = "IGMU_SCREENSHOTS_DIR"
CHROMIUM_ENV = "IGMU_CHROMIUM"


# --- fixtures: a sweep, its report, an MLflow server and a browser ----------------------------------


def write_ui_sweep(folder: Path) -> Path:
    """Three ESD trials of four steps, each ending in a full (tiny) scorecard, so all five aspects are
    logged; no early stopping, so every trial has them."""
    path = folder / f"{SWEEP}.yaml"
    path.write_text(textwrap.dedent(f"""
        name: {SWEEP}
        model: world
        target: hazard
        algorithm: esd
        params:
          lr: {{loguniform: [3.0e-3, 5.0e-2]}}
          steps: 4
          ddim_steps: 2
          batch_size: 1
        search: {{sampler: random, num_samples: {TRIALS}, max_concurrent: 2, seed: 0}}
        objectives: {{forgetting: max, preservation: max}}
        early_stop: {{scheduler: none, eval_every: 2}}
        eval: {{interim: small, final: full, held_out: none}}
        resources: {{cpu: 1}}
    """))
    return path


@pytest.fixture(scope="module")
def sweep(ray_session, tmp_path_factory):
    """The finished sweep: its results folder, tracking URI, experiment and trial runs."""
    from mlflow.tracking import MlflowClient

    from igmu.sweep.engine import run_sweep
    from igmu.sweep.file import load_sweep

    folder = tmp_path_factory.mktemp("browser-sweep")
    outcome = run_sweep(load_sweep(write_ui_sweep(folder)), storage=str(folder / "results"), verbose=0,
                        extra_settings={"budget_sizes": TINY_BUDGETS})
    client = MlflowClient(outcome.tracking_uri)
    experiment_id = client.get_run(outcome.parent_run_id).info.experiment_id
    mark_as_training_experiment(client, experiment_id)
    trials = client.search_runs([experiment_id], f"tags.`{PARENT_TAG}` = '{outcome.parent_run_id}'")
    assert len(trials) == TRIALS and all(set(SCORE_METRICS) <= set(t.data.metrics) for t in trials), \
        [sorted(t.data.metrics) for t in trials]
    return {"folder": folder, "storage": folder / "results", "tracking_uri": outcome.tracking_uri,
            "experiment_id": experiment_id, "parent": client.get_run(outcome.parent_run_id), "trials": trials}


def mark_as_training_experiment(client, experiment_id: str) -> None:
    """Tag the experiment as model training unless the sweep tracker already did."""
    tags = client.get_experiment(experiment_id).tags
    if EXPERIMENT_KIND_TAG not in tags:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)


@pytest.fixture(scope="module")
def report(sweep):
    """`igmu compare` on the sweep: the path of its HTML report."""
    out = sweep["folder"] / "report"
    code = main(["compare", SWEEP, "--out", str(out), "--storage", str(sweep["storage"])])
    assert code == 0 and (out / "report.html").is_file(), f"igmu compare exited {code}"
    return out / "report.html"


@pytest.fixture(scope="module")
def mlflow_server(sweep):
    """`mlflow server` on the sweep's SQLite store, on a free port; stopped (its whole process group)
    at teardown."""
    port = free_port()
    log = sweep["folder"] / "mlflow-server.log"
    server = launch([str(BIN / "mlflow"), "server", "--backend-store-uri", sweep["tracking_uri"],
                     "--host", "127.0.0.1", "--port", str(port), "--workers", "1"], log)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(f"{url}/health", server, log)
        yield url
    finally:
        stop(server)


def chromium_path() -> str:
    found = os.environ.get(CHROMIUM_ENV) or shutil.which("chromium")
    if not found:
        pytest.fail(f"no Chromium: install it (`apt-get install -y chromium`, as .ci/run does) or set "
                    f"{CHROMIUM_ENV} to a Chromium or Chrome binary", pytrace=False)
    return found


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless system Chromium with a new, empty profile; closed (and Playwright's driver stopped) at
    teardown. Playwright drives the system browser: it never downloads one of its own."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=executable, headless=True,
            args=CHROMIUM_FLAGS, viewport=VIEWPORT)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser):
    page = browser.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    yield page
    page.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get(SCREENSHOTS_ENV) or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# --- looking at a page -----------------------------------------------------------------------------


def page_text(page, limit: int = 2000) -> str:
    return page.locator("body").inner_text()[:limit]


def expect_visible(locator, what: str, page) -> None:
    """Wait for `locator` to show; on timeout fail saying what was looked for and what the page showed."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        locator.first.wait_for(state="visible")
    except PlaywrightTimeout:
        pytest.fail(f"{what}: not shown within {UI_TIMEOUT_MS // 1000} s at {page.url}\n"
                    f"the page showed:\n{page_text(page)}", pytrace=False)


def expect_text(page, text: str, what: str) -> None:
    expect_visible(page.get_by_text(text, exact=True), f"{what} ({text!r})", page)


def close_assistant(page) -> None:
    """MLflow 3.17 opens its assistant panel over a third of the page on first load; a user closes it."""
    close = page.get_by_role("button", name="Close")
    if close.count():
        close.first.click()


def save_screenshot(page, folder: Path, name: str) -> Path:
    path = folder / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 0, f"empty screenshot {path}"
    return path


def ui_url(server: str, route: str, **query) -> str:
    """A hash route of the MLflow UI with its query, in the training view."""
    return f"{server}/#/{route}?{urllib.parse.urlencode({**query, **TRAINING_VIEW})}"


# --- the runs table ----------------------------------------------------------------------------------


def expand_parent_run(page, parent_name: str) -> None:
    """Child runs sit folded under their parent; the expander is the +/- button in the parent's name cell."""
    parent_row = page.locator('[role="row"]', has=page.get_by_text(parent_name, exact=True))
    expander = parent_row.locator('button[data-component-id*="runnamecellrenderer"]')
    expect_visible(expander, f"the expander of the parent run {parent_name!r}", page)
    expander.first.click()


def choose_columns(page, show: list[str], hide: list[str]) -> None:
    """What a user does in the Columns menu: tick the aspects' metric columns, untick attribute columns
    that push them off a 1280-pixel screen."""
    page.get_by_role("button", name="Columns").click()
    tree = page.get_by_test_id("column-selector-tree")
    expect_visible(tree, "the Columns menu", page)
    for name in [*hide, *show]:
        entry = tree.get_by_text(name, exact=True)
        expect_visible(entry, f"column {name!r} in the Columns menu", page)
        entry.first.click()
    page.keyboard.press("Escape")


def make_room_for_run_names(page, extra_px: int = 160) -> None:
    """Fold the side bar and drag the Run Name column wider, so trial names are not cut short."""
    page.get_by_role("button", name="Toggle sidebar").click()
    handle = page.locator('[role="columnheader"][col-id="attributes.`Run Name`"] .ag-header-cell-resize').first
    expect_visible(handle, "the Run Name column's resize handle", page)
    box = handle.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    handle.hover()
    page.mouse.down()
    # The grid resizes from the pointer moves it sees frame by frame; one jump of the mouse resizes nothing.
    for dx in range(DRAG_STEP_PX, extra_px + 1, DRAG_STEP_PX):
        page.mouse.move(x + dx, y)
        page.wait_for_timeout(DRAG_STEP_MS)
    page.mouse.up()


def metric_cell(page, run_name: str, metric: str):
    """The cell of `metric` in the row of `run_name`: the grid renders the pinned name column and the
    scrolling columns as separate rows joined by their row index."""
    name_row = page.locator('[role="row"][row-index]', has=page.get_by_text(run_name, exact=True)).first
    index = name_row.get_attribute("row-index")
    return page.locator(f'[role="row"][row-index="{index}"] [role="gridcell"][col-id="metrics.`{metric}`"]').first


def assert_shows_score(shown: str, logged: float, what: str) -> None:
    """The table rounds scores for display (to about six digits); it must show the logged one."""
    try:
        value = float(shown.strip())
    except ValueError:
        pytest.fail(f"{what}: the runs table shows {shown!r}, not the logged score {logged}", pytrace=False)
    assert value == pytest.approx(logged, abs=SHOWN_SCORE_TOLERANCE), \
        f"{what}: the runs table shows {shown!r}, MLflow has {logged}"


def test_the_runs_page_shows_the_trials_and_their_five_aspects(page, sweep, mlflow_server, screenshots):
    page.goto(ui_url(mlflow_server, f"experiments/{sweep['experiment_id']}"))
    parent_name = sweep["parent"].info.run_name
    expect_text(page, parent_name, "the sweep's parent run in the runs table")
    assert "/overview" not in page.url and "workflowType=genai" not in page.url, \
        f"the experiment opened on the GenAI traces overview, not its runs: {page.url}"
    close_assistant(page)
    expand_parent_run(page, parent_name)
    for trial in sweep["trials"]:
        expect_text(page, trial.info.run_name, "a trial (child run) under the expanded parent")
    choose_columns(page, show=SCORE_METRICS, hide=["Dataset", "Source", "Models"])
    for aspect in SCORE_METRICS:
        expect_visible(page.get_by_role("columnheader", name=aspect), f"the {aspect!r} column header", page)
        for trial in sweep["trials"]:
            cell = metric_cell(page, trial.info.run_name, aspect)
            expect_visible(cell, f"{trial.info.run_name}'s {aspect} cell", page)
            assert_shows_score(cell.inner_text(), trial.data.metrics[aspect], f"{trial.info.run_name}'s {aspect}")
    make_room_for_run_names(page)
    save_screenshot(page, screenshots, "mlflow-runs.png")


# --- the compare view ---------------------------------------------------------------------------------


def fold_sections(page, titles: list[str]) -> None:
    """Fold sections by their titles, as a user does to see both runs' metrics on one screen."""
    for title in titles:
        header = page.get_by_text(title, exact=True)
        expect_visible(header, f"the {title!r} section's title", page)
        header.first.click()


def scroll_to_row(page, grid, metric: str) -> None:
    """The Metrics table draws only the rows in its window (a virtualised grid): scroll it down a few
    rows at a time until the row of `metric` is drawn. The grid is scrolled by setting its scroll
    position: in headless Chromium, mouse-wheel events over this grid left it where it was."""
    link = page.get_by_role("link", name=metric, exact=True)
    for _ in range(MAX_GRID_SCROLLS):
        if link.count():
            break
        grid.evaluate(f"grid => {{ grid.scrollTop += {GRID_SCROLL_PX}; }}")
        page.wait_for_timeout(GRID_SETTLE_MS)
    expect_visible(link, f"the {metric!r} row of the compare view's Metrics table", page)


def test_the_compare_view_shows_two_trials_and_their_aspects(page, sweep, mlflow_server, screenshots):
    first, second = sweep["trials"][:2]
    ids = [first.info.run_id, second.info.run_id]
    page.goto(ui_url(mlflow_server, "compare-runs", runs=json.dumps(ids),
                     experiments=json.dumps([sweep["experiment_id"]])))
    expect_text(page, "Comparing 2 Runs from 1 Experiment", "the compare view's title")
    close_assistant(page)
    for run in (first, second):
        expect_text(page, run.info.run_name, "a compared trial's name under Run details")
        expect_text(page, run.info.run_id, "a compared trial's run id under Run details")
    expect_visible(page.get_by_text("Metrics", exact=True), "the Metrics section", page)
    fold_sections(page, ["Visualizations", "Parameters"])
    # The table lists metrics alphabetically and draws only the rows in view: efficiency_seconds sorts
    # before every score (val_*), so it is drawn first and finds the table.
    metric_names = page.locator(".ReactVirtualized__Grid",
                                has=page.get_by_role("link", name="efficiency_seconds", exact=True))
    expect_visible(metric_names, "the Metrics table (its 'efficiency_seconds' row)", page)
    # Held by its element: once scrolled, the row that found the table is no longer drawn.
    grid = metric_names.first.element_handle()
    for aspect in SCORE_METRICS:
        scroll_to_row(page, grid, aspect)
    # Back to the table's top, on screen as a whole, with the run names above it.
    grid.evaluate("grid => { grid.scrollTop = 0; }")
    grid.scroll_into_view_if_needed()
    save_screenshot(page, screenshots, "mlflow-compare.png")


# --- the igmu compare report ---------------------------------------------------------------------------


def test_the_report_shows_the_leaderboard_aspects_and_pareto_plot(page, report, screenshots):
    page.goto(report.as_uri())
    expect_text(page, "Leaderboard", "the leaderboard heading")
    leaderboard = page.locator("table").first
    headers = leaderboard.locator("th").all_inner_texts()
    missing = [a for a in ASPECTS if f"best {a}" not in headers]
    assert not missing, f"leaderboard lacks the columns best {missing}; its headers: {headers}"
    rows = leaderboard.locator("tbody tr")
    assert rows.count() >= 1 and "esd" in rows.first.inner_text(), \
        f"no leaderboard row for esd: {leaderboard.inner_text()}"
    plot = page.locator("svg.pareto")
    expect_visible(plot, "the Pareto plot (svg.pareto)", page)
    points = plot.locator("circle.front")
    assert points.count() >= 1, "the Pareto plot draws no front point"
    box = plot.bounding_box()
    assert box and box["width"] > 100 and box["height"] > 100, f"the Pareto plot is not drawn at size: {box}"
    save_screenshot(page, screenshots, "igmu-report.png")
