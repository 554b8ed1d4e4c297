"""Progress: silent by default, reported by the layers that do the work, shown by the CLI on a terminal
only (never into a pipe, never with --quiet), and never changing what is computed."""

from __future__ import annotations

import io
import json
import os
import pickle
import pty
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest

from igmu import progress

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# Small evaluation sets, so a subprocess eval takes seconds of sampling instead of a minute.
TINY_SIZES = {"small": {"forget": 4, "retain": 4, "related": 2, "paraphrase": 0}}


class Recorder(progress.Reporter):
    """Keeps every call, to check what the layers report."""

    def __init__(self):
        self.events: list[tuple] = []

    def start(self, description, total=None):
        recorder = self

        class Line(progress.Task):
            def advance(self, amount=1, info=None):
                recorder.events.append(("advance", description, amount, info))

            def update(self, **changes):
                recorder.events.append(("update", description, changes))

        self.events.append(("start", description, total))
        return Line()

    def finish(self, task):
        self.events.append(("finish",))

    def count(self, description, amount):
        self.events.append(("count", description, amount))


def test_the_silent_reporter_is_the_default():
    assert type(progress.current()) is progress.Reporter
    with progress.task("anything", total=3) as line:
        line.advance(info="x")
        line.update(completed=2, description="y")
    progress.count("things", 5)
    assert type(progress.current()) is progress.Reporter


def test_installed_applies_inside_the_block_only():
    recorder = Recorder()
    with progress.installed(recorder):
        assert progress.current() is recorder
        progress.count("images generated", 4)
    assert type(progress.current()) is progress.Reporter
    assert recorder.events == [("count", "images generated", 4)]


class CountingUnlearner:
    """The loop's view of an unlearner: steps with losses, nothing else."""

    name = "fake"
    total_steps = 3

    def __init__(self):
        self.step_index = 0

    def prepare(self):
        pass

    def step(self):
        return {"loss": 1.0 / (self.step_index + 1), "other": 2.0}


def test_the_unlearning_loop_reports_steps_and_losses_without_changing_them():
    from igmu.algorithms.loop import run_unlearning

    silent = run_unlearning(CountingUnlearner())
    recorder = Recorder()
    with progress.installed(recorder):
        shown = run_unlearning(CountingUnlearner())
    assert shown == silent
    assert recorder.events[0] == ("start", "fake steps", 3)
    advances = [e for e in recorder.events if e[0] == "advance"]
    assert [e[3] for e in advances] == ["loss=1.0000 other=2.0000", "loss=0.5000 other=2.0000",
                                        "loss=0.3333 other=2.0000"]
    assert recorder.events[-1] == ("finish",)


def test_the_scorecard_reports_each_aspect_it_judges(monkeypatch):
    from igmu.metrics import scorecard as scorecard_module

    result = SimpleNamespace(to_json=lambda: {"score": 1.0})
    specs = [SimpleNamespace(name=name, fn=lambda ctx: result) for name in ("forgetting", "preservation")]
    monkeypatch.setattr(scorecard_module, "metrics_for", lambda budget, context: specs)
    monkeypatch.setattr(scorecard_module, "evaluation_record", lambda ctx, settings: {})  # not what this checks
    ctx = SimpleNamespace(budget=SimpleNamespace(name="small"), model=SimpleNamespace(source="m"), seed=0,
                          split="validation", target=SimpleNamespace(name="ball", category="object"),
                          extra_blocks=dict)
    recorder = Recorder()
    with progress.installed(recorder):
        card = scorecard_module.scorecard(ctx)
    assert list(card["aspects"]) == ["forgetting", "preservation"]
    assert recorder.events[0] == ("start", "aspects judged", 2)
    judged = [e[2]["info"] for e in recorder.events if e[0] == "update"]
    assert judged == ["forgetting", "preservation"]
    assert sum(e[2] for e in recorder.events if e[0] == "advance") == 2


def test_the_image_cache_counts_generated_images_not_reused_ones():
    import torch

    from igmu.metrics.cache import GENERATED, ImageCache

    generator = SimpleNamespace(unet=torch.nn.Linear(2, 2), text_encoder=torch.nn.Linear(2, 2), scheduler_name="ddim",
                                sampling_defaults={"steps": 2, "guidance": 1.0},
                                sample=lambda prompts, **_: torch.zeros(len(prompts), 3, 4, 4))
    cache = ImageCache()
    recorder = Recorder()
    with progress.installed(recorder):
        cache.images(generator, ["a", "b", "c"], seed=0)
        cache.images(generator, ["a", "b", "c"], seed=0)  # from memory: nothing generated
        cache.images(generator, ["d"], seed=0)
    assert recorder.events == [("count", GENERATED, 3), ("count", GENERATED, 1)]


def terminal_console(width: int = 120):
    from rich.console import Console

    text = io.StringIO()
    return Console(file=text, force_terminal=True, width=width, color_system=None), text


def test_the_rich_reporter_shows_steps_info_and_counts():
    from igmu.cli.progress import RichReporter

    console, text = terminal_console()
    reporter = RichReporter(console)
    with progress.installed(reporter):
        with progress.task("judges", total=4) as line:
            for _ in range(4):
                line.advance(info="loss=0.1234")
        progress.count("images generated", 24)
        progress.count("images generated", 8)
    reporter.close()
    shown = ANSI.sub("", text.getvalue())
    assert "judges" in shown and "4/4" in shown and "loss=0.1234" in shown
    assert "images generated" in shown and "32/32" in shown


def test_progress_shows_only_on_a_terminal_and_not_when_quiet(monkeypatch):
    from igmu.cli.progress import RichReporter, showing_progress

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    with showing_progress(quiet=False) as reporter:
        assert type(reporter) is progress.Reporter
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    with showing_progress(quiet=True) as reporter:
        assert type(reporter) is progress.Reporter
    with showing_progress(quiet=False) as reporter:
        assert isinstance(reporter, RichReporter) and progress.current() is reporter
    assert type(progress.current()) is progress.Reporter


def test_the_sweep_line_counts_trial_states_and_the_best_final_score():
    from igmu.sweep.trainable import FINAL
    from igmu.sweep.watch import SweepProgress

    recorder = Recorder()
    with progress.installed(recorder):
        watch = SweepProgress("demo", "forgetting", "max", total=4)
    trials = [SimpleNamespace(trial_id=f"t{i}", last_result={}) for i in range(4)]
    for trial in trials:
        watch.on_trial_start(0, trials, trial)
    for trial, score in ((trials[0], 0.4), (trials[1], 0.9)):
        trial.last_result = {FINAL: True, "forgetting": score}
        watch.on_trial_result(0, trials, trial, trial.last_result)
        watch.on_trial_complete(0, trials, trial)
    watch.on_trial_complete(0, trials, trials[2])  # no final report: ASHA stopped it
    watch.on_trial_error(0, trials, trials[3])
    assert watch.summary() == "0 running, 2 finished, 1 stopped early, 1 errored; best forgetting 0.900 (t1)"
    assert recorder.events[0] == ("start", "sweep demo", 4)
    assert recorder.events[-1][2]["completed"] == 4
    # Tune pickles its callbacks to resume a sweep: the display stays behind.
    restored = pickle.loads(pickle.dumps(watch))
    assert restored.summary() == watch.summary() and type(restored.reporter) is progress.Reporter


def igmu_on_terminal(*args: str, env: dict) -> tuple[int, str, str]:
    """Run igmu with stderr on a pseudo-terminal and stdout on a pipe: (exit code, terminal text, stdout)."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "igmu.cli", *args], stdout=subprocess.PIPE, stderr=terminal,
                            env=env)
    os.close(terminal)
    shown = []
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        shown.append(chunk)
    os.close(controller)
    stdout = proc.communicate(timeout=600)[0]
    return proc.returncode, ANSI.sub("", b"".join(shown).decode(errors="replace")), stdout.decode()


@pytest.fixture
def eval_env():
    return {**os.environ, "TERM": "xterm", "COLUMNS": "120", "IGMU_BUDGET_SIZES": json.dumps(TINY_SIZES)}


EVAL = ("eval", "--target", "ball", "--budget", "small", "--json")
PROGRESS_TEXT = ("images generated", "aspects judged")


@pytest.mark.slow
def test_eval_shows_progress_on_a_terminal_only_and_the_same_scores(eval_env):
    code, shown, stdout = igmu_on_terminal(*EVAL, env=eval_env)
    assert code == 0, shown
    assert all(text in shown for text in PROGRESS_TEXT), shown
    assert "2/2" in shown  # both small-budget aspects judged
    piped = subprocess.run([sys.executable, "-m", "igmu.cli", *EVAL], capture_output=True, text=True, env=eval_env,
                           check=False)
    assert piped.returncode == 0, piped.stderr
    assert not any(text in piped.stderr for text in PROGRESS_TEXT), piped.stderr
    assert json.loads(stdout) == json.loads(piped.stdout)  # display only: the same scores, shown or not


@pytest.mark.slow
def test_eval_with_quiet_shows_no_progress_on_a_terminal(eval_env):
    code, shown, stdout = igmu_on_terminal(*EVAL, "--quiet", env=eval_env)
    assert code == 0, shown
    assert not any(text in shown for text in PROGRESS_TEXT), shown
    assert set(json.loads(stdout)["aspects"]) == {"forgetting", "preservation"}
