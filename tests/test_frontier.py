"""`igmu pareto` and `igmu compare` on a real MLflow SQLite store and a matching results table.

Each test builds its own results root in tmp_path: a parent run with one child run per trial (plus
a child of another sweep, which must never be touched), results.parquet, sweep.json and an image
grid per finished trial, laid out exactly like `igmu sweep` writes them.
"""

import json
import math
import shutil
import statistics
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pandas as pd
import pytest

from igmu.analysis.frontier import front_summary
from igmu.analysis.pareto import knee_point
from igmu.cli.main import main
from igmu.metrics.base import ASPECTS

# Every test builds a fresh MLflow SQLite store (schema migrations: seconds each on 2 cores).
pytestmark = pytest.mark.slow

SWEEP = "demo"
STOPPED_CHAMPION = "t-stopped-top"  # early-stopped, yet better than every finished trial
DIRECTIONS = {**{aspect: "max" for aspect in ASPECTS}, "efficiency_seconds": "min"}


# --- building a sweep's outputs -------------------------------------------------------------------


def _trial_rows(seed: int, prefix: str) -> list[dict]:
    """Two algorithms with random (tied, rounded) scores, plus the statuses that must be filtered."""
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(14):
        algorithm = "esd" if index % 2 == 0 else "uce"
        params = ({"param_lr": float(rng.choice([1e-4, 3e-4, 1e-3])), "param_steps": int(rng.integers(50, 200)),
                   "param_erase_scale": math.nan} if algorithm == "esd"
                  else {"param_lr": math.nan, "param_steps": math.nan,
                        "param_erase_scale": float(np.round(rng.uniform(0.1, 10), 2))})
        scores = {aspect: float(np.round(rng.uniform(0.2, 0.9), 2)) for aspect in ASPECTS}
        rows.append({"trial_id": f"{prefix}{index:02d}", "algorithm": algorithm, **params, "status": "finished",
                     "early_stopped": False, **scores, "forget_retain_hmean": 0.5,
                     "efficiency_seconds": float(np.round(rng.uniform(5, 60), 1)),
                     "trial_seconds": 70.0})
    rows[3]["preservation"] = math.nan  # finished, but a score is missing: never on a front
    rows[5].update({"status": "error", **{aspect: math.nan for aspect in ASPECTS}})
    rows[6].update({"status": "early_stopped", "early_stopped": True, "trial_id": f"{prefix}stopped"})
    rows[7].update({"status": "early_stopped", "early_stopped": True, "trial_id": STOPPED_CHAMPION,
                    **{aspect: 0.99 for aspect in ASPECTS}, "efficiency_seconds": 1.0})
    return rows


def _write_grid(path: Path, seed: int) -> None:
    import matplotlib.image

    path.parent.mkdir(parents=True, exist_ok=True)
    matplotlib.image.imsave(path, np.random.default_rng(seed).uniform(size=(8, 16, 3)))


class SweepStore:
    """A results root holding sweeps and their MLflow runs, as `igmu sweep` leaves them."""

    def __init__(self, root: Path, artifacts: Path):
        from mlflow.tracking import MlflowClient

        from igmu.sweep.results import default_tracking_uri

        self.root = root
        self.client = MlflowClient(default_tracking_uri(root))
        self.experiment_id = self.client.create_experiment("igmu-test", artifact_location=artifacts.as_uri())
        self.parents: dict[str, str] = {}

    def add_sweep(self, name: str, rows: list[dict], stale_true: tuple[str, ...] = ()) -> pd.DataFrame:
        parent = self.client.create_run(self.experiment_id, run_name=name, tags={"igmu.sweep": name}).info.run_id
        self.parents[name] = parent
        for number, row in enumerate(rows):
            tags = {"mlflow.parentRunId": parent, "igmu.trial_id": row["trial_id"], "igmu.sweep": name}
            if row["trial_id"] in stale_true:
                tags["pareto"] = "true"  # left over from an earlier analysis
            row["mlflow_run_id"] = self.client.create_run(self.experiment_id, tags=tags).info.run_id
            if row["status"] == "finished":
                _write_grid(self.root / name / "trials" / row["trial_id"] / "grid.png", number)
        table = pd.DataFrame(rows)
        (self.root / name).mkdir(parents=True, exist_ok=True)
        table.to_parquet(self.root / name / "results.parquet", index=False)
        (self.root / name / "sweep.json").write_text(
            json.dumps({"experiment_id": self.experiment_id, "parent_run_id": parent}))
        return table

    def pareto_tags(self, name: str) -> dict[str, str | None]:
        """trial id -> its child run's `pareto` tag (None when untagged)."""
        runs = self.client.search_runs([self.experiment_id],
                                       f"tags.`mlflow.parentRunId` = '{self.parents[name]}'")
        return {run.data.tags["igmu.trial_id"]: run.data.tags.get("pareto") for run in runs}


@pytest.fixture
def store(tmp_path, monkeypatch):
    root = tmp_path / "results"
    monkeypatch.setenv("IGMU_RESULTS", str(root))
    monkeypatch.chdir(tmp_path)  # nothing may land in the repository's working directory
    sweeps = SweepStore(root, tmp_path / "artifacts")
    sweeps.table = sweeps.add_sweep(SWEEP, _trial_rows(seed=1, prefix="t"), stale_true=("t00", "t01", "t02"))
    sweeps.add_sweep("other", [{**row, "trial_id": f"o{i}"} for i, row in enumerate(_trial_rows(seed=9, prefix="o"))])
    return sweeps


def igmu(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()  # drop whatever building the store printed
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- brute-force references ---------------------------------------------------------------------------


def scored(table: pd.DataFrame, objectives, include_stopped=False) -> pd.DataFrame:
    statuses = ["finished", "early_stopped"] if include_stopped else ["finished"]
    rows = table[table["status"].isin(statuses)]
    return rows[np.all(np.isfinite(rows[list(objectives)].to_numpy(float)), axis=1)].reset_index(drop=True)


def brute_force_front(rows: pd.DataFrame, objectives) -> set[str]:
    signs = np.array([1.0 if DIRECTIONS[o] == "max" else -1.0 for o in objectives])
    values = rows[list(objectives)].to_numpy(float) * signs  # larger is better in every column
    front = set()
    for i in range(len(values)):
        dominated = any(np.all(values[j] >= values[i]) and np.any(values[j] > values[i]) for j in range(len(values)))
        if not dominated:
            front.add(rows["trial_id"].iloc[i])
    return front


def reference_hypervolume(rows: pd.DataFrame, objectives) -> float:
    """Brute force on a grid, against the default reference igmu documents for `igmu pareto`.

    The reference is 0 for a maximised score and, for a minimised objective, the worst value plus 10%
    of the observed range. Works in larger-is-better form: a grid cell between the reference and the
    points counts when some point is at least the cell's upper corner in every objective.
    """
    signs = np.array([1.0 if DIRECTIONS[o] == "max" else -1.0 for o in objectives])
    values = rows[list(objectives)].to_numpy(float)
    worst, span = values.max(axis=0), np.ptp(values, axis=0)
    reference = np.where(signs > 0, 0.0, worst + 0.1 * np.where(span > 0, span, 1.0)) * signs
    values = values * signs
    values = values[np.all(values > reference, axis=1)]
    if len(values) == 0:
        return 0.0
    edges = [np.unique(np.append(values[:, j], reference[j])) for j in range(len(objectives))]
    highs = np.stack([g.ravel() for g in np.meshgrid(*[e[1:] for e in edges], indexing="ij")], axis=1)
    widths = np.stack([g.ravel() for g in np.meshgrid(*[np.diff(e) for e in edges], indexing="ij")], axis=1)
    covered = np.any(np.all(values[None, :, :] >= highs[:, None, :], axis=2), axis=1)
    return math.fsum(np.prod(widths[covered], axis=1))


# --- igmu pareto ------------------------------------------------------------------------------------


@pytest.mark.parametrize("objectives", ["forgetting,preservation", "forgetting,preservation,quality",
                                        "preservation,efficiency_seconds",
                                        "forgetting,preservation,quality,robustness",
                                        "forgetting,preservation,quality,alignment,efficiency_seconds"])
def test_pareto_json_matches_brute_force(store, capsys, objectives):
    code, out, err = igmu(capsys, "pareto", SWEEP, "--objectives", objectives, "--json")
    assert code == 0, err
    result = json.loads(out)
    names = objectives.split(",")
    rows = scored(store.table, names)
    front_ids = {entry["trial_id"] for entry in result["front"]}
    assert result["objectives"] == names
    assert front_ids == brute_force_front(rows, names)
    assert result["hypervolume"] == pytest.approx(reference_hypervolume(rows, names), rel=1e-12)
    assert result["knee"] in front_ids
    knee = knee_point(rows[names].to_numpy(float), [DIRECTIONS[o] for o in names])
    assert result["knee"] == rows["trial_id"].iloc[knee]


def test_pareto_on_four_objectives_reports_the_hypervolume(store, capsys):
    objectives = ["forgetting", "preservation", "quality", "robustness"]
    rows = scored(store.table, objectives)
    expected = reference_hypervolume(rows, objectives)
    assert expected > 0
    code, out, err = igmu(capsys, "pareto", SWEEP, "--objectives", ",".join(objectives), "--json")
    assert code == 0, err
    result = json.loads(out)
    assert {entry["trial_id"] for entry in result["front"]} == brute_force_front(rows, objectives)
    assert isinstance(result["hypervolume"], float)
    assert result["hypervolume"] == pytest.approx(expected, rel=1e-12)
    code, out, err = igmu(capsys, "pareto", SWEEP, "--objectives", ",".join(objectives))
    assert code == 0, err
    assert f"hypervolume: {expected:.4f}" in out


def test_pareto_json_entries_carry_params_and_scores(store, capsys):
    code, out, _ = igmu(capsys, "pareto", SWEEP, "--json")
    assert code == 0
    by_id = store.table.set_index("trial_id")
    for entry in json.loads(out)["front"]:
        row = by_id.loc[entry["trial_id"]]
        assert set(entry["scores"]) == set(ASPECTS)
        assert entry["scores"] == {aspect: pytest.approx(row[aspect]) for aspect in ASPECTS}
        expected = {name[len("param_"):]: row[name] for name in by_id.columns
                    if name.startswith("param_") and not pd.isna(row[name])}
        assert entry["params"] == expected
        assert entry["early_stopped"] is False


def test_pareto_table_lists_front_and_hypervolume(store, capsys):
    code, out, _ = igmu(capsys, "pareto", SWEEP)
    assert code == 0
    rows = scored(store.table, ["forgetting", "preservation"])
    front = brute_force_front(rows, ["forgetting", "preservation"])
    listed = {line.split()[0] for line in out.splitlines()[2:-1]}
    assert listed == front
    assert f"hypervolume: {reference_hypervolume(rows, ['forgetting', 'preservation']):.4f}" in out


def test_tags_front_true_rest_false_and_clears_stale_tags(store, capsys):
    for objectives in ("forgetting,preservation", "quality,robustness"):
        code, out, err = igmu(capsys, "pareto", SWEEP, "--objectives", objectives, "--json")
        assert code == 0, err
        front = {entry["trial_id"] for entry in json.loads(out)["front"]}
        tags = store.pareto_tags(SWEEP)
        assert {trial for trial, tag in tags.items() if tag == "true"} == front
        assert {trial for trial, tag in tags.items() if tag == "false"} == set(tags) - front
    assert set(store.pareto_tags("other").values()) == {None}  # another sweep's runs are untouched
    parent = store.client.get_run(store.parents[SWEEP])
    assert parent.data.tags["igmu.pareto_objectives"] == "quality,robustness"


def test_pareto_tags_the_store_named_by_mlflow_tracking_uri(store, capsys, tmp_path, monkeypatch):
    """On a cluster the store is the server in $MLFLOW_TRACKING_URI, not SQLite under the results root."""
    from mlflow.tracking import MlflowClient

    elsewhere = tmp_path / "server-store.db"
    (store.root / "mlflow.db").rename(elsewhere)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{elsewhere}")
    code, out, err = igmu(capsys, "pareto", SWEEP, "--json")
    assert code == 0, err
    front = {entry["trial_id"] for entry in json.loads(out)["front"]}
    runs = MlflowClient(f"sqlite:///{elsewhere}").search_runs(
        [store.experiment_id], f"tags.`mlflow.parentRunId` = '{store.parents[SWEEP]}'")
    assert {r.data.tags["igmu.trial_id"] for r in runs if r.data.tags.get("pareto") == "true"} == front
    assert not (store.root / "mlflow.db").exists()  # no stray store created where the env var was ignored


def test_plots_are_logged_on_the_parent_run(store, capsys, tmp_path):
    code, _, err = igmu(capsys, "pareto", SWEEP, "--json")
    assert code == 0, err
    parent = store.parents[SWEEP]
    listed = {item.path for item in store.client.list_artifacts(parent, "pareto")}
    assert listed == {"pareto/pareto_forgetting-preservation.png", "pareto/pareto_forgetting-preservation.html"}
    folder = Path(store.client.download_artifacts(parent, "pareto", str(tmp_path / "download")))
    assert (folder / "pareto_forgetting-preservation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (folder / "pareto_forgetting-preservation.html").read_text()
    assert "<script" not in page and "plotly" not in page.lower()
    ElementTree.fromstring(page[page.index("<svg"):page.index("</svg>") + len("</svg>")])  # well-formed SVG
    front = brute_force_front(scored(store.table, ["forgetting", "preservation"]), ["forgetting", "preservation"])
    tooltips = page.split("<title>")[2:]  # [0] precedes the page title, [1] is the page title
    assert sum("Pareto front" in tip.split("</title>")[0] for tip in tooltips) == len(front)
    assert any("lr = " in tip for tip in tooltips) and any("erase_scale = " in tip for tip in tooltips)
    assert page.count('class="dominated') == len(scored(store.table, ["forgetting", "preservation"])) - len(front)


def test_early_stopped_trials_only_with_include_stopped(store, capsys):
    _, out, _ = igmu(capsys, "pareto", SWEEP, "--json")
    default = json.loads(out)
    assert STOPPED_CHAMPION not in {entry["trial_id"] for entry in default["front"]}
    _, out, _ = igmu(capsys, "pareto", SWEEP, "--json", "--include-stopped")
    included = json.loads(out)
    # the stopped trial dominates every other one, so it is the whole front, marked as stopped
    assert [(e["trial_id"], e["early_stopped"]) for e in included["front"]] == [(STOPPED_CHAMPION, True)]
    assert included["scored_trials"] == default["scored_trials"] + 2
    assert store.pareto_tags(SWEEP)[STOPPED_CHAMPION] == "true"


def test_sweep_found_by_parent_run_id(store, capsys):
    _, by_name, _ = igmu(capsys, "pareto", SWEEP, "--json")
    code, by_parent, err = igmu(capsys, "pareto", store.parents[SWEEP], "--json")
    assert code == 0, err
    assert json.loads(by_parent) == json.loads(by_name)


def test_sweep_found_through_mlflow_when_no_sweep_json_names_it(store, capsys, tmp_path):
    # with sweep.json gone, only the parent run's igmu.sweep tag in MLflow leads to the sweep folder
    shutil.move(str(store.root / SWEEP / "sweep.json"), str(tmp_path / "sweep.json.bak"))
    code, out, err = igmu(capsys, "pareto", store.parents[SWEEP], "--json")
    assert code == 0 and err == ""
    front = {entry["trial_id"] for entry in json.loads(out)["front"]}
    assert front == brute_force_front(scored(store.table, ["forgetting", "preservation"]),
                                      ["forgetting", "preservation"])
    assert {t for t, tag in store.pareto_tags(SWEEP).items() if tag == "true"} == front


def test_bare_parquet_file_skips_mlflow_with_a_note(store, capsys, tmp_path):
    bare = tmp_path / "copy" / "trials.parquet"
    bare.parent.mkdir()
    shutil.copy(store.root / SWEEP / "results.parquet", bare)
    code, out, err = igmu(capsys, "pareto", str(bare), "--json")
    assert code == 0
    front = {entry["trial_id"] for entry in json.loads(out)["front"]}
    assert front == brute_force_front(scored(store.table, ["forgetting", "preservation"]),
                                      ["forgetting", "preservation"])
    assert "skipping MLflow" in err and len(err.strip().splitlines()) == 1
    assert store.pareto_tags(SWEEP)["t00"] == "true"  # the stale tag is still there: MLflow was not touched


def test_sweeps_own_parquet_path_updates_mlflow(store, capsys):
    code, out, err = igmu(capsys, "pareto", str(store.root / SWEEP / "results.parquet"), "--json")
    assert code == 0 and err == ""
    front = {entry["trial_id"] for entry in json.loads(out)["front"]}
    assert {t for t, tag in store.pareto_tags(SWEEP).items() if tag == "true"} == front


# --- igmu compare -----------------------------------------------------------------------------------


def _leaderboard_line(markdown: str, algorithm: str) -> list[str]:
    section = markdown.split("## Leaderboard")[1].split("## Knee points")[0]
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) > 1 and cells[1] == algorithm:
            return cells
    raise AssertionError(f"{algorithm} is not in the leaderboard")


def test_compare_report_matches_the_tables(store, capsys, tmp_path):
    out_dir = tmp_path / "report"
    code, out, err = igmu(capsys, "compare", SWEEP, "other", "--out", str(out_dir))
    assert code == 0, err
    markdown = (out_dir / "report.md").read_text()
    page = (out_dir / "report.html").read_text()
    objectives = ["forgetting", "preservation"]
    both = pd.concat([store.table.assign(sweep=SWEEP),
                      pd.read_parquet(store.root / "other" / "results.parquet").assign(sweep="other")])
    volumes, fronts = {}, {}
    for algorithm in ("esd", "uce"):
        rows = scored(both[both["algorithm"] == algorithm], objectives)
        front = fronts[algorithm] = rows[rows["trial_id"].isin(brute_force_front(rows, objectives))]
        volumes[algorithm] = reference_hypervolume(rows, objectives)
        cells = _leaderboard_line(markdown, algorithm)
        assert cells[2] == str(len(rows)) and cells[3] == str(len(front))
        assert cells[4] == f"{volumes[algorithm]:.4f}"
        assert cells[5:10] == [f"{front[aspect].max():.4f}" for aspect in ASPECTS]
        assert cells[10] == f"{statistics.median(rows['efficiency_seconds']):.2f}"
        knee = rows.iloc[knee_point(rows[objectives].to_numpy(float), ["max", "max"])]
        assert f"| {algorithm} | {knee['sweep']} | {knee['trial_id']} | {knee['forgetting']:.4f} |" in markdown
        assert (out_dir / "grids" / f"{algorithm}.png").read_bytes() == (
            store.root / knee["sweep"] / "trials" / knee["trial_id"] / "grid.png").read_bytes()
        assert f'src="grids/{algorithm}.png"' in page and f"(grids/{algorithm}.png)" in markdown
    ranked = sorted(volumes, key=volumes.get, reverse=True)
    assert _leaderboard_line(markdown, ranked[0])[0] == "1"
    assert (out_dir / "fronts.png").read_bytes()[:4] == b"\x89PNG" and "![Pareto fronts per algorithm](fronts.png)" in markdown
    assert "<svg" in page and page.count('<g class="series"') == 2 and "<script" not in page
    assert page.count("<polyline") == sum(len(front) > 1 for front in fronts.values())
    assert f"{volumes['esd']:.4f}" in page and "report.md" in out


def test_compare_json_leaderboard(store, capsys, tmp_path):
    code, out, _ = igmu(capsys, "compare", SWEEP, "--out", str(tmp_path / "r"), "--objectives",
                        "forgetting,efficiency_seconds", "--json")
    assert code == 0
    board = {row["algorithm"]: row for row in json.loads(out)["leaderboard"]}
    rows = scored(store.table[store.table["algorithm"] == "uce"], ["forgetting", "efficiency_seconds"])
    assert board["uce"]["hypervolume"] == pytest.approx(reference_hypervolume(rows, ["forgetting", "efficiency_seconds"]))
    assert board["uce"]["knee"]["trial_id"] in brute_force_front(rows, ["forgetting", "efficiency_seconds"])


def _add_held_out_scores(store, name: str) -> pd.DataFrame:
    """Give a stored sweep what its held-out stage writes: val_/test_ columns with 95% intervals on the
    finished trials, and a defaults.parquet beside the table."""
    rng = np.random.default_rng(5)
    table = pd.read_parquet(store.root / name / "results.parquet")
    for aspect in ASPECTS:
        table[f"val_{aspect}"] = table.pop(aspect)
        test = np.round(rng.uniform(0.3, 0.9, len(table)), 3)
        width = np.round(rng.uniform(0.01, 0.2, len(table)), 3)
        finished = (table["status"] == "finished").to_numpy()
        table[f"test_{aspect}"] = np.where(finished, test, np.nan)
        table[f"test_{aspect}_ci_low"] = np.where(finished, test - width, np.nan)
        table[f"test_{aspect}_ci_high"] = np.where(finished, np.minimum(1.0, test + width), np.nan)
    table.to_parquet(store.root / name / "results.parquet", index=False)
    defaults = pd.DataFrame([{"algorithm": algorithm, "efficiency_seconds": seconds,
                              **{f"test_{a}{end}": value + shift for a in ASPECTS
                                 for end, shift in (("", 0.0), ("_ci_low", -0.05), ("_ci_high", 0.05))}}
                             for algorithm, value, seconds in (("esd", 0.6, 40.0), ("uce", 0.62, 3.0))])
    defaults.to_parquet(store.root / name / "defaults.parquet", index=False)
    return table


def _leave_one_out_best(rows: pd.DataFrame, objectives) -> str:
    """The front member whose removal loses the most hypervolume, by brute force on the grid."""
    front = rows[rows["trial_id"].isin(brute_force_front(rows, objectives))]
    total = reference_hypervolume(front, objectives)
    if len(front) == 1:
        return front["trial_id"].iloc[0]
    losses = [total - reference_hypervolume(front.drop(index=i), objectives) for i in front.index]
    return front["trial_id"].iloc[int(np.argmax(losses))]


def test_compare_defaults_and_tuned_tables_recomputed_from_parquet(store, capsys, tmp_path):
    """Both held-out tables of `igmu compare`, recomputed from the Parquet files alone."""
    stored = _add_held_out_scores(store, SWEEP)
    out_dir = tmp_path / "report"
    code, out, err = igmu(capsys, "compare", SWEEP, "--out", str(out_dir), "--json")
    assert code == 0, err
    report = json.loads(out)
    objectives = ["forgetting", "preservation"]
    validation = stored.rename(columns={f"val_{a}": a for a in ASPECTS})
    tuned = {row["algorithm"]: row for row in report["tuned"]}
    for algorithm in ("esd", "uce"):
        mine = stored[stored["algorithm"] == algorithm]
        best = _leave_one_out_best(scored(validation[validation["algorithm"] == algorithm], objectives), objectives)
        row = mine[mine["trial_id"] == best].iloc[0]
        assert tuned[algorithm]["trial_id"] == best
        for aspect in ASPECTS:
            assert tuned[algorithm]["scores"][aspect] == pytest.approx(row[f"test_{aspect}"])
            assert tuned[algorithm]["intervals"][aspect] == pytest.approx(
                [row[f"test_{aspect}_ci_low"], row[f"test_{aspect}_ci_high"]])
        assert tuned[algorithm]["trials"] == len(mine)
        assert tuned[algorithm]["compute_seconds"] == pytest.approx(mine["trial_seconds"].sum())
    for aspect in ASPECTS:
        leader = max(tuned.values(), key=lambda r: r["scores"][aspect])
        for row in tuned.values():
            low, high = row["intervals"][aspect]
            overlaps = row is not leader and low <= leader["intervals"][aspect][1] and leader["intervals"][aspect][0] <= high
            assert row["tied_with_best"][aspect] == overlaps
    defaults = {row["algorithm"]: row for row in report["defaults"]}
    assert defaults["uce"]["scores"]["forgetting"] == pytest.approx(0.62) and defaults["esd"]["seconds"] == 40.0
    # 0.60 [0.55, 0.65] against 0.62 [0.57, 0.67]: within each other's intervals
    assert defaults["esd"]["tied_with_best"]["forgetting"] and not defaults["uce"]["tied_with_best"]["forgetting"]
    markdown, page = (out_dir / "report.md").read_text(), (out_dir / "report.html").read_text()
    for text in (markdown, page):
        assert "Defaults (test split)" in text and "Tuned (test split)" in text
    assert "0.620 [0.57, 0.67]" in markdown and "0.600 [0.55, 0.65] ~" in page
    code, out, _ = igmu(capsys, "compare", SWEEP, "--out", str(out_dir))
    assert code == 0 and "defaults (held-out test split" in out and "tuned (held-out test split" in out


def test_pareto_ranks_the_test_split_on_request(store, capsys):
    stored = _add_held_out_scores(store, SWEEP)
    code, out, _ = igmu(capsys, "pareto", SWEEP, "--split", "test", "--json")
    assert code == 0
    test_view = stored.rename(columns={f"test_{a}": a for a in ASPECTS})
    rows = scored(test_view, ["forgetting", "preservation"])
    assert {e["trial_id"] for e in json.loads(out)["front"]} == brute_force_front(rows, ["forgetting", "preservation"])


# --- bad input and the sweep summary --------------------------------------------------------------


def _add_unscored_sweep(store):
    rows = _trial_rows(seed=3, prefix="u")
    for row in rows:
        if row["status"] == "finished":
            row.update({"status": "error", **{aspect: math.nan for aspect in ASPECTS}})
    store.add_sweep("unscored", rows)


@pytest.mark.parametrize("args, needle", [
    (["pareto", "nope"], "unknown sweep 'nope'"),
    (["pareto", "0123456789abcdef0123456789abcdef"], "unknown sweep"),
    (["pareto", "missing.parquet"], "no results table"),
    (["pareto", SWEEP, "--objectives", "forgetting,qualty"], "did you mean quality"),
    (["pareto", SWEEP, "--objectives", "speed"], "valid: forgetting, preservation, quality"),
    (["pareto", "unscored"], "no scored trial"),
    (["compare", SWEEP, "nope"], "unknown sweep 'nope'"),
    (["compare", "unscored"], "no scored trial"),
    (["compare", SWEEP, "--objectives", "forgeting"], "unknown objective 'forgeting'"),
])
def test_bad_input_is_one_line_and_exit_code_2(store, capsys, args, needle):
    _add_unscored_sweep(store)
    code, out, err = igmu(capsys, *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], err
    assert out == ""


def test_front_summary_for_the_sweep_command(store):
    text = front_summary(store.table, {"forgetting": "max", "preservation": "max"})
    front = brute_force_front(scored(store.table, ["forgetting", "preservation"]), ["forgetting", "preservation"])
    assert all(trial in text for trial in front)
    assert f"{reference_hypervolume(scored(store.table, ['forgetting', 'preservation']), ['forgetting', 'preservation']):.4f}" in text
    as_rows = front_summary(store.table.to_dict("records"), ["forgetting", "preservation"])
    assert as_rows == text
    unscored = store.table.assign(status="error")
    assert front_summary(unscored, ["forgetting"]).startswith("Pareto front: none (no scored trial")


def test_pareto_uses_the_directions_the_sweep_file_declared(store, capsys):
    """A sweep that declared efficiency_seconds as maximised is analysed that way by `igmu pareto`."""
    state_file = store.root / SWEEP / "sweep.json"
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({**state, "objectives": {"forgetting": "max", "efficiency_seconds": "max"}}))
    code, out, _ = igmu(capsys, "pareto", SWEEP, "--objectives", "forgetting,efficiency_seconds", "--json")
    assert code == 0
    answer = json.loads(out)
    rows = scored(store.table, ["forgetting", "efficiency_seconds"])
    values = rows[["forgetting", "efficiency_seconds"]].to_numpy(float)  # both maximised
    expected = {rows["trial_id"].iloc[i] for i in range(len(values))
                if not any(np.all(values[j] >= values[i]) and np.any(values[j] > values[i]) for j in range(len(values)))}
    assert {row["trial_id"] for row in answer["front"]} == expected
    assert expected != brute_force_front(rows, ["forgetting", "efficiency_seconds"])  # the natural reading differs


def test_objectives_default_to_what_the_sweeps_declared():
    from pathlib import Path

    from igmu.analysis.frontier import choose_objectives
    from igmu.sweep.results import SweepSource

    def source(objectives):
        return SweepSource("s", Path("t.parquet"), Path("."), objectives=objectives)

    three = source({"forgetting": "max", "preservation": "max", "quality": "max"})
    assert choose_objectives(None, [three]) == {"forgetting": "max", "preservation": "max", "quality": "max"}
    with_time = source({"forgetting": "max", "efficiency_seconds": "min", "quality": "max"})
    assert choose_objectives(None, [three, with_time]) == {"forgetting": "max", "quality": "max"}
    assert choose_objectives(None, [source({})]) == {"forgetting": "max", "preservation": "max"}
    assert choose_objectives(None, [three, source({"robustness": "max", "alignment": "max"})]) == \
        {"forgetting": "max", "preservation": "max"}
    assert choose_objectives("quality,forgetting", [three]) == {"quality": "max", "forgetting": "max"}
