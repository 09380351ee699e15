"""distributed.results.plots: valid PNGs of sensible size, titles whole, integer trial ticks, one
colour per
outer fold, importances only when they can be computed, and report.md saying why when not."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from distributed.results import plots

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]
HAVE_SKLEARN = importlib.util.find_spec("sklearn") is not None
LONG_TITLE = "outer test folds pooled: WAR 0.922 UAR 0.922"
NAMES_11 = ["anger", "anxiety_fear", "boredom_tiredness", "contempt_disdain", "disgust_aversion",
            "happiness_elation", "interest_curiosity", "neutral_baseline", "pride_triumph",
            "sadness_despair", "surprise_amazement"]  # fmt: skip


def _decode(png: bytes) -> np.ndarray:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None, "not a decodable PNG"
    return img


def _inside(fig, artist) -> bool:
    """The artist's drawn box lies within the figure canvas (nothing cut at any edge)."""
    r = fig.canvas.get_renderer()
    bb, fb = artist.get_window_extent(r), fig.bbox
    return (
        bb.x0 >= fb.x0 - 0.5
        and bb.y0 >= fb.y0 - 0.5
        and bb.x1 <= fb.x1 + 0.5
        and (bb.y1 <= fb.y1 + 0.5)
    )


def _rows(values_by_fold: dict[int, list[tuple[float, bool]]]) -> list[dict]:
    return [
        {"outer": k, "trial_id": f"t{k}_{i}", "cv_metric": v, "complete": done}
        for k, trials in values_by_fold.items()
        for i, (v, done) in enumerate(trials)
    ]


# --- confusion -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "names, title",
    [
        (["neutral", "emotional"], LONG_TITLE),
        (NAMES_11, LONG_TITLE),
        (["a", "b"], "outer test folds pooled over all five outer folds of a run: " + LONG_TITLE),
    ],
)
def test_confusion_title_whole_counts_in_cells_rows_normalised(names, title):
    n = len(names)
    rng = np.random.default_rng(n)
    cm = rng.integers(0, 9, (n, n)) + np.diag(rng.integers(10, 90, n))
    cm[0] = 0  # a class never seen: its row must not divide by zero
    fig = plots._confusion_figure(cm, names, title)
    fig.canvas.draw()
    sup = fig._suptitle
    assert sup.get_text().replace("\n", " ") == title  # wrapped at spaces only, nothing dropped
    assert _inside(fig, sup)
    ax = fig.axes[0]
    for label in [*ax.get_xticklabels(), *ax.get_yticklabels(), ax.xaxis.label, ax.yaxis.label]:
        assert _inside(fig, label), label.get_text()
    texts = [t.get_text() for t in ax.texts]
    assert texts == [str(cm[i, j]) for i in range(n) for j in range(n)]
    expected = np.zeros((n, n))
    for i in range(n):
        total = sum(int(c) for c in cm[i])
        for j in range(n):
            expected[i, j] = cm[i, j] / total if total else 0.0
    np.testing.assert_allclose(ax.images[0].get_array(), expected)
    assert "row" in fig.axes[1].get_ylabel()  # the colour bar says what the colour means
    img = _decode(plots.confusion_png(cm, names, title))
    h, w = img.shape[:2]
    assert 400 <= w <= 1000 and 250 <= h <= 900, (w, h)


def test_confusion_rejects_a_matrix_that_does_not_match_the_names():
    with pytest.raises(ValueError, match="shape"):
        plots.confusion_png(np.zeros((3, 3), int), ["a", "b"], "t")


def test_confusion_csv_is_the_documented_table():
    got = plots.confusion_csv(np.array([[3, 1], [0, 5]]), ["calm", "angry"])
    assert got == b"true\\predicted,calm,angry\r\ncalm,3,1\r\nangry,0,5\r\n"


# --- optimisation history ------------------------------------------------------------------------


def test_history_two_folds_three_trials_with_stopped_ones():
    rows = _rows({0: [(0.50, True), (0.45, False), (0.70, True)],
                  1: [(0.40, False), (0.55, True), (0.52, True)]})  # fmt: skip
    fig = plots._history_figure(rows, "cv_metric", "UAR")
    fig.canvas.draw()
    ax = fig.axes[0]
    assert list(ax.get_xticks()) == [1, 2, 3]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "3"]
    assert ax.get_ylabel() == "inner-CV UAR"
    lines = ax.get_lines()
    for k in (0, 1):
        mine = [r for r in rows if r["outer"] == k]
        want_best, best = [], None
        for r in mine:  # running best over the complete trials, written out
            if r["complete"] and (best is None or r["cv_metric"] > best):
                best = r["cv_metric"]
            want_best.append(np.nan if best is None else best)
        (step,) = [ln for ln in lines if ln.get_label() == f"outer {k}: best so far"]
        np.testing.assert_allclose(step.get_ydata()[:3], want_best)
        colour = step.get_color()
        filled = [ln for ln in lines if ln.get_marker() == "o" and ln.get_color() == colour]
        crosses = [ln for ln in lines if ln.get_marker() == "x" and ln.get_color() == colour]
        assert len(filled) == 1 and len(crosses) == 1, k
        assert list(filled[0].get_xdata()) == [i + 1 for i, r in enumerate(mine) if r["complete"]]
        assert list(crosses[0].get_xdata()) == [
            i + 1 for i, r in enumerate(mine) if not r["complete"]
        ]
    colours = {ln.get_color() for ln in lines if ln.get_label().endswith("best so far")}
    assert len(colours) == 2  # one colour per outer fold
    legend = fig.legends[0]
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels[:2] == ["outer 0: best so far", "outer 1: best so far"]
    assert "complete trial" in labels and any("stopped early" in s for s in labels)
    assert _inside(fig, legend) and _inside(fig, ax.title)
    h, w = _decode(plots.history_png(rows, label="UAR")).shape[:2]
    assert (w, h) == (800, 420)


@pytest.mark.parametrize("n", [1, 7, 24, 130])
def test_history_ticks_are_integers_from_one(n):
    rows = _rows({0: [(0.5 + 0.001 * i, i % 3 != 0) for i in range(n)]})
    fig = plots._history_figure(rows, "cv_metric", None)
    fig.canvas.draw()
    ticks = fig.axes[0].get_xticks()
    assert ticks[0] == 1 and all(float(t).is_integer() for t in ticks) and ticks[-1] <= n
    assert 2 <= len(ticks) + (n == 1) <= 12
    assert fig.axes[0].get_ylabel() == "inner-CV cv_metric"


def test_history_of_no_trials_is_still_a_png():
    _decode(plots.history_png([]))


# --- importances ---------------------------------------------------------------------------------


def _dists():
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    return {"lr": FloatDistribution(1e-4, 1e-1, log=True),
            "rep": CategoricalDistribution(["timeline", "potion"])}  # fmt: skip


def _trials(n: int, complete: bool = True, value=None) -> list[dict]:
    rng = np.random.default_rng(1)
    rows = []
    for i in range(n):
        lr = float(10 ** rng.uniform(-4, -1))
        score = value if value is not None else 0.8 + 0.1 * np.log10(lr)
        rep = ("timeline", "potion")[i % 2]
        rows.append({"outer": 0, "trial_id": f"t{i}", "lr": lr, "rep": rep, "cv_metric": score,
                     "complete": complete})  # fmt: skip
    return rows


def test_importances_empty_when_they_cannot_be_computed():
    d = _dists()
    two = _trials(2) + _trials(3, complete=False)
    assert plots.importances(two, d, "cv_metric") == {}
    assert plots.importance_note(two, d, "cv_metric") == (
        "Parameter importances: not computed (needs >= 3 complete trials with different values; "
        "2 here)."
    )
    assert plots.importances(_trials(5), {}, "cv_metric") == {}
    assert "no parameter" in plots.importance_note(_trials(5), {}, "cv_metric")
    same = _trials(5, value=0.6)
    assert plots.importances(same, d, "cv_metric") == {}
    assert "5 here, all equal" in plots.importance_note(same, d, "cv_metric")
    nan = _trials(5)
    for r in nan[2:]:
        r["cv_metric"] = float("nan")  # NaN scores do not count as complete trials
    assert plots.importances(nan, d, "cv_metric") == {}
    bad = _trials(5)
    bad[0]["rep"] = "not-a-choice"  # fANOVA setup fails: reported, not raised
    assert plots.importances(bad, d, "cv_metric") == {}
    assert "not computed" in plots.importance_note(bad, d, "cv_metric")
    assert plots.importance_png({}) is None


@pytest.mark.skipif(not HAVE_SKLEARN, reason="Optuna's fANOVA needs scikit-learn")
def test_importances_find_the_parameter_that_drives_the_score():
    rows = _trials(12)  # the score is a function of lr alone
    imp = plots.importances(rows, _dists(), "cv_metric")
    assert set(imp) == {"lr", "rep"} and imp["lr"] > 0.8 > imp["rep"] >= 0
    assert sum(imp.values()) == pytest.approx(1.0)
    assert plots.importances(rows, _dists(), "cv_metric") == imp  # seeded: same report twice
    assert plots.importance_note(rows, _dists(), "cv_metric") == ""


@pytest.mark.skipif(HAVE_SKLEARN, reason="checks the message when scikit-learn is missing")
def test_importances_say_that_scikit_learn_is_missing():
    assert plots.importances(_trials(12), _dists(), "cv_metric") == {}
    assert "scikit-learn" in plots.importance_note(_trials(12), _dists(), "cv_metric")


def test_importance_png():
    h, w = _decode(plots.importance_png({"lr": 0.7, "width": 0.2, "rep": 0.1})).shape[:2]
    assert w == 600 and 150 <= h <= 300


# --- timeline ------------------------------------------------------------------------------------


def test_timeline_png():
    probs = lambda i: {"a": 0.5 + 0.1 * i, "b": 0.5 - 0.1 * i}  # noqa: E731
    tl = [{"index": i, "start_frame": 8 * i, "end_frame": 8 * i + 7, "start_s": i / 3,
           "end_s": (i + 1) / 3, "probabilities": probs(i)} for i in range(4)]  # fmt: skip
    result = {"id": "x/clip", "label": "a", "probabilities": {"a": 0.6, "b": 0.4}, "timeline": tl}
    assert _decode(plots.timeline_png(result, ["a", "b"])).shape == (360, 1000, 3)
    assert _decode(plots.timeline_png({**result, "timeline": []}, ["a", "b"])).shape[:2] == (
        360,
        1000,
    )


# --- the module's boundaries and the report ------------------------------------------------------


def test_plots_import_neither_ray_nor_torch_nor_pyplot():
    code = (
        "import sys, numpy as np\n"
        "from distributed.results import plots\n"
        "plots.confusion_png(np.eye(2, dtype=int), ['a', 'b'], 't')\n"
        "plots.history_png([{'outer': 0, 'trial_id': 't', 'cv_metric': 0.5, 'complete': True}])\n"
        "plots.importance_png({'lr': 1.0})\n"
        "bad = [m for m in ('ray', 'torch', 'matplotlib.pyplot') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def _write_results(tmp_path, rows):
    from datasets.manifest import Counts, Manifest
    from datasets.protocols import InnerSplit, OuterSplit, Protocol
    from distributed.core.config import default_config
    from distributed.results.report import write_results
    from distributed.search.space import SearchSpace

    space = SearchSpace(space={"lr": {"loguniform": [1e-4, 1e-1]},
                               "rep": {"choice": ["timeline", "potion"]}})  # fmt: skip
    final = {"outer": 0, "n": 6, "war": 0.5, "uar": 0.5, "cv_metric": 0.6, "epochs": 3,
             "trial": 0, "params": {"lr": 1e-3}, "confusion": [[2, 1], [2, 1]]}  # fmt: skip
    split = InnerSplit(("a/1",), ("a/2",))
    manifest = Manifest("gesture", ("a", "b"), {}, Counts(6, 6, 0, 0, {"a": 3, "b": 3}, 3))
    protocol = Protocol("test protocol", "one fold",
                        (OuterSplit(("a/1", "a/2"), ("b/1",), (split, split)),))  # fmt: skip
    text = write_results(
        str(tmp_path), shards="s", samples=len(rows), manifest=manifest, protocol=protocol,
        base=default_config("gesture"), space=space, rows=rows, finals=[final], seconds=60,
        commit="abc",
    )  # fmt: skip
    return text, tmp_path / "results"


def test_report_without_importances_writes_no_figure_and_says_why(tmp_path):
    text, out = _write_results(tmp_path, _trials(2) + _trials(2, complete=False))
    assert not (out / "param_importances.png").exists()
    assert "`param_importances.png`" not in text
    assert (
        "Parameter importances: not computed (needs >= 3 complete trials with different values; "
        "2 here)." in text
    )
    assert (out / "report.md").read_text() == text
    for name in ("optimisation_history.png", "confusion.png"):
        _decode((out / name).read_bytes())


@pytest.mark.skipif(not HAVE_SKLEARN, reason="Optuna's fANOVA needs scikit-learn")
def test_report_with_importances_writes_the_figure(tmp_path):
    text, out = _write_results(tmp_path, _trials(8))
    _decode((out / "param_importances.png").read_bytes())
    assert "Parameter importances: lr " in text and "not computed" not in text
