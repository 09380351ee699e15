"""Comparing runs (issue 27): the statistics against values computed by hand from the tests'
definitions and against ``scipy.stats``, the bootstrap against the normal approximation, and
``python -m distributed.compare`` on two real smoke searches over the same demo shards."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from scipy import stats

from distributed.results import comparison as cmp
from tests.lines import one_line_error

# --- the tests, by hand ---------------------------------------------------------------------


def test_mcnemar_exact_is_the_binomial_tail_of_the_discordant_pairs():
    # 1 item right only by A, 9 only by B, 5 right by both, 5 wrong by both: the two-sided exact
    # p is 2 * P(X <= 1), X ~ Bin(10, 1/2) = 2 * (1 + 10) / 1024
    a = np.array([1] + [0] * 9 + [1] * 5 + [0] * 5, bool)
    b = np.array([0] + [1] * 9 + [1] * 5 + [0] * 5, bool)
    m = cmp.mcnemar(a, b)
    assert (m["a_only"], m["b_only"]) == (1, 9)
    assert m["p"] == pytest.approx(22 / 1024, abs=1e-12)
    assert cmp.mcnemar(a, a)["p"] == 1.0  # no discordant pair


def test_wilcoxon_exact_and_its_floor_by_hand():
    # 6 folds, every difference positive: the rank sum of the negatives is 0, the one most
    # extreme of 2**6 equally likely sign patterns on each side: p = 2 / 64
    a = np.array([0.60, 0.62, 0.65, 0.70, 0.71, 0.80])
    b = a - np.array([0.01, 0.02, 0.03, 0.04, 0.05, 0.06])
    t = cmp.paired_tests(a, b)
    assert t["w_p"] == pytest.approx(2 / 64) and t["wilcoxon_floor"] == pytest.approx(2 / 64)
    # the smallest p with n folds is 2 / 2**n: never below 0.05 with five folds or fewer
    assert [cmp.wilcoxon_floor(n) for n in (1, 2, 5, 6)] == [1.0, 0.5, 0.0625, 0.03125]


def test_paired_t_by_hand():
    # differences 1, 2, 3: mean 2, sd 1, t = 2 / (1 / sqrt 3) with 2 degrees of freedom; the
    # Student t CDF with 2 df is 1/2 + t / (2 sqrt(2 + t^2))
    a, b = np.array([3.0, 5.0, 7.0]), np.array([2.0, 3.0, 4.0])
    t = cmp.paired_tests(a, b)
    t_hand = 2 / (1 / math.sqrt(3))
    p_hand = 2 * (1 - (0.5 + t_hand / (2 * math.sqrt(2 + t_hand**2))))
    assert t["t"] == pytest.approx(t_hand) and t["t_p"] == pytest.approx(p_hand)
    assert t["mean_diff"] == pytest.approx(2.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_paired_tests_agree_with_scipy(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(0.4, 0.8, 8), rng.uniform(0.4, 0.8, 8)
    t = cmp.paired_tests(a, b)
    ref_t = stats.ttest_rel(a, b)
    ref_w = stats.wilcoxon(a, b, method="exact")
    assert (t["t"], t["t_p"]) == pytest.approx((ref_t.statistic, ref_t.pvalue))
    assert (t["w"], t["w_p"]) == pytest.approx((ref_w.statistic, ref_w.pvalue))


def test_no_difference_and_a_constant_difference():
    a = np.array([0.5, 0.6, 0.7])
    same = cmp.paired_tests(a, a)
    assert same["w_p"] == 1.0 and math.isnan(same["t_p"]) and same["mean_diff"] == 0
    shifted = cmp.paired_tests(a + 0.1, a)  # the same gain on every fold: no spread to test
    assert shifted["t"] == math.inf and shifted["t_p"] == 0.0


# --- the bootstrap --------------------------------------------------------------------------


def _run(name: str, folds: dict, classes=("a", "b", "c"), fingerprint=None) -> cmp.Run:
    return cmp.Run(name, f"/runs/{name}", list(classes), folds, fingerprint or {})


def _fold(y, pred) -> cmp.Fold:
    y = np.asarray(y)
    return cmp.Fold(np.array([f"i{k:05d}" for k in range(len(y))]), y, np.asarray(pred))


def test_bootstrap_of_war_matches_the_normal_approximation_on_a_large_fold():
    rng = np.random.default_rng(0)
    n = 4000
    y = rng.integers(0, 3, n)
    pred = np.where(rng.random(n) < 0.7, y, (y + 1) % 3)
    p = float(np.mean(pred == y))
    ci = cmp.run_intervals(_run("r", {0: _fold(y, pred)}), [0], n_boot=4000, seed=1)
    half = 1.96 * math.sqrt(p * (1 - p) / n)
    assert ci["war"][0] == pytest.approx(p - half, abs=0.003)
    assert ci["war"][1] == pytest.approx(p + half, abs=0.003)


def test_bootstrap_uar_is_the_mean_recall_over_the_classes_each_resample_holds():
    """The vectorised resample scores against a plain loop over the same draws, from UAR's
    definition (the mean over classes present of hits / items of that class)."""
    rng = np.random.default_rng(3)
    y, pred = rng.integers(0, 4, 30), rng.integers(0, 4, 30)
    idx = rng.integers(0, 30, (50, 30))
    got = cmp._fold_scores(y, pred, idx, 4)
    for row, draw in zip(got, idx):
        yy, pp = y[draw], pred[draw]
        recalls = [np.mean(pp[yy == c] == c) for c in range(4) if np.any(yy == c)]
        assert row[0] == pytest.approx(np.mean(yy == pp))
        assert row[1] == pytest.approx(np.mean(recalls))


def test_paired_bootstrap_edges_and_seed():
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    perfect = _run("p", {0: _fold(y, y), 1: _fold(y, y)})
    assert cmp.run_intervals(perfect, [0, 1])["uar"] == (1.0, 1.0)
    noisy = _run("n", {0: _fold(y, np.roll(y, 1)), 1: _fold(y, y)})
    twin = _run("t", noisy.folds)
    boot = cmp.bootstrap([noisy, twin], [0, 1], n_boot=300, seed=5)
    assert np.array_equal(boot[0], boot[1])  # the same items drawn for both runs
    again = cmp.bootstrap([noisy, twin], [0, 1], n_boot=300, seed=5)
    assert np.array_equal(boot, again)


# --- what may be compared -------------------------------------------------------------------

FP = {"shards": {"digest": "d1", "rows": 8, "path": "/s"}, "protocol": {"name": "p", "folds": "f"}}


def test_runs_on_other_shards_protocols_or_items_are_refused_naming_the_difference():
    y = np.array([0, 1, 2, 0])
    a = _run("a", {0: _fold(y, y), 1: _fold(y, y)}, fingerprint=FP)
    other_data = _run("b", a.folds, fingerprint={**FP, "shards": {**FP["shards"], "digest": "x"}})
    with pytest.raises(cmp.CompareError, match="a and b were run on other shards"):
        cmp.check_comparable([a, other_data])
    other_folds = _run("c", a.folds, fingerprint={**FP, "protocol": {"name": "p", "folds": "g"}})
    with pytest.raises(cmp.CompareError, match="other protocol: p vs p .same name, other folds"):
        cmp.check_comparable([a, other_folds])
    fewer = _run("d", {0: a.folds[0]}, fingerprint=FP)
    outers, notes = cmp.check_comparable([a, fewer])
    assert outers == [0] and notes == ["a: outer folds [1] are not in every run and are left out"]
    moved = _run("e", {0: cmp.Fold(np.array(["x", "y", "z", "w"]), y, y)}, fingerprint=FP)
    with pytest.raises(cmp.CompareError, match="outer fold 0: a and e scored other test items"):
        cmp.check_comparable([a, moved])


# --- the command, on two real searches ------------------------------------------------------


@pytest.fixture(scope="module")
def two_runs(gesture_shards, ray_session, tmp_path_factory):
    """Two smoke searches on the same shards and outer folds (2 folds, 1 trial each): one whose
    only configuration learns, one whose learning rate cannot learn."""
    from distributed import tune

    tmp = tmp_path_factory.mktemp("compare")
    runs = {}
    for name, lr in (("learns", 0.01), ("stuck", 1e-7)):
        space = tmp / f"{name}.json"
        point = {"representation": "timeline", "width": 16, "lr": lr}
        space.write_text(json.dumps({"space": {"lr": {"choice": [lr]}}, "start": [point]}))
        argv = ["gesture", "--smoke", "--shards", gesture_shards, "--folds", "2", "--samples",
                "1", "--epochs", "2", "--max-concurrent", "1", "--space", str(space),
                "--storage", str(tmp), "--name", name]  # fmt: skip
        assert tune.main(argv) == 0
        runs[name] = tmp / name
    return tmp, runs


@pytest.mark.timeout(600)
def test_every_search_keeps_its_per_item_predictions_and_an_interval(two_runs, gesture_shards):
    import csv

    from tests.conftest import stored_protocol

    _, runs = two_runs
    results = runs["learns"] / "results"
    rows = list(csv.DictReader((results / "predictions.csv").open()))
    protocol = stored_protocol(gesture_shards)
    for outer in (0, 1):
        ids = sorted(r["id"] for r in rows if r["outer"] == str(outer))
        assert ids == sorted(protocol["outer"][outer]["test"])  # every test item, once
    classes = [k[2:] for k in rows[0] if k.startswith("p_")]
    assert len(classes) == 6 and rows[0]["subject"] and rows[0]["config_hash"]
    for r in rows:
        probs = [float(r[f"p_{c}"]) for c in classes]
        assert sum(probs) == pytest.approx(1, abs=1e-4)
        assert r["predicted"] == classes[int(np.argmax(probs))]
    report = (results / "report.md").read_text()
    assert "95% bootstrap interval of the mean" in report and "`predictions.csv`" in report


@pytest.mark.timeout(600)
def test_compare_writes_a_complete_report_and_refuses_other_data(two_runs, tmp_path, capfd):
    from distributed import compare

    tmp, runs = two_runs
    out = tmp_path / "cmp"
    capfd.readouterr()
    assert compare.main([str(runs["learns"]), str(runs["stuck"]), "--out", str(out)]) == 0
    text = (out / "compare.md").read_text()
    assert capfd.readouterr().out == text
    for needle in ("## Scores per outer fold", "## learns vs stuck", "ΔWAR", "ΔUAR",
                   "paired t (p)", "Wilcoxon exact (p)", "McNemar's exact test",
                   "## Per-class recall", "95% CI UAR",
                   "with 2 folds the exact Wilcoxon test cannot reach p < 0.05 (its smallest p "
                   "is 0.5)"):  # fmt: skip
        assert needle in text, needle
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert compare.main([str(runs["learns"]), str(runs["stuck"]), "--out", str(out),
                         "--format", "latex"]) == 0  # fmt: skip
    assert r"\begin{tabular}" in (out / "compare.tex").read_text()
    # a run on other data: the same run folder whose record names other shards
    other = tmp_path / "other"
    shutil.copytree(runs["stuck"], other)
    record = json.loads((other / "search.json").read_text())
    record["fingerprint"]["shards"]["digest"] = "another-manifest"
    (other / "search.json").write_text(json.dumps(record))
    capfd.readouterr()
    assert compare.main([str(runs["learns"]), str(other), "--out", str(out)]) == 2
    one_line_error(capfd.readouterr().err, "learns and other were run on other shards")


def test_compare_refuses_what_is_not_a_finished_run(tmp_path, capfd):
    from distributed import compare

    (tmp_path / "a").mkdir()
    out = tmp_path / "out"
    assert compare.main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 2
    one_line_error(capfd.readouterr().err, "not a finished distributed.tune run")
    assert not out.exists()  # nothing created for runs that cannot be compared
    assert compare.main([str(tmp_path / "a")]) == 2
    one_line_error(capfd.readouterr().err, "at least two runs")


# --- repeated nested CV ---------------------------------------------------------------------


def test_spreads_over_repeats_and_over_folds_by_hand():
    from distributed.search.repeats import spreads

    rows = [{"repeat": 0, "war": w} for w in (0.6, 0.8)] + [
        {"repeat": 1, "war": w} for w in (0.5, 0.5)
    ]
    s = spreads(rows, "war", 2)
    # repeat means 0.7 and 0.5: std 0.1; within-repeat stds 0.1 and 0: mean 0.05
    assert s["mean"] == pytest.approx(0.6)
    assert s["over_repeats"] == pytest.approx(0.1) and s["over_folds"] == pytest.approx(0.05)


def test_fixed_folds_repeat_with_other_seeds_and_drawn_folds_are_drawn_again(gesture_shards):
    from dataclasses import replace

    from datasets.manifest import read_manifest, read_protocol
    from distributed.core.config import default_config
    from distributed.search.driver import SearchPlan
    from distributed.search.repeats import REPEAT_SEED, repeat_plans

    manifest = read_manifest(gesture_shards)
    key, protocol = read_protocol(gesture_shards, manifest)
    plan = SearchPlan(shards=gesture_shards, manifest=manifest, protocol=protocol,
                      protocol_key=key, base=default_config("gesture", seed=3), space=None,
                      outers=[0], samples=1, root="/r", resources=None, concurrency=1)  # fmt: skip
    drawn = repeat_plans(plan, 3)
    assert [p.root for p, _ in drawn] == ["/r/repeat0", "/r/repeat1", "/r/repeat2"]
    assert drawn[0][0].protocol == protocol and {p.base.seed for p, _ in drawn} == {3}
    assert drawn[1][1] == f"folds drawn again with seed {REPEAT_SEED}"
    tests = [set(p.protocol.outer[0].test) for p, _ in drawn]
    assert tests[0] != tests[1] != tests[2]  # other outer folds ...
    for p, _ in drawn[1:]:  # ... still subject-independent, every item tested once
        subject = dict(zip(*(read_table_cols(gesture_shards, ("id", "subject")))))
        for f in p.protocol.outer:
            assert not {subject[i] for i in f.train} & {subject[i] for i in f.test}
        assert sorted(i for f in p.protocol.outer for i in f.test) == sorted(subject)
    fixed = repeat_plans(replace(plan, protocol_key="lists"), 3)
    assert all(p.protocol == protocol for p, _ in fixed)
    assert [p.base.seed for p, _ in fixed] == [3, 4, 5]
    assert fixed[2][1] == "the same fixed folds, training seed 5"


def read_table_cols(root: str, cols) -> list[list]:
    from datasets.shards import read_table

    table = read_table(root, list(cols))
    return [table[c].to_pylist() for c in cols]


@pytest.mark.timeout(600)
def test_tune_repeats_runs_each_repeat_as_a_run_and_reports_both_spreads(
    gesture_shards, ray_session, tmp_path, capfd
):
    from distributed import compare, tune

    argv = ["gesture", "--smoke", "--shards", gesture_shards, "--folds", "1", "--samples", "1",
            "--epochs", "1", "--max-concurrent", "1", "--repeats", "2", "--storage",
            str(tmp_path), "--name", "rep"]  # fmt: skip
    assert tune.main(argv) == 0
    root = tmp_path / "rep"
    report = (root / "results" / "report.md").read_text()
    assert "2 repeats" in report and "spread over repeats" in report
    assert "spread over folds" in report and "folds drawn again with seed 7919" in report
    for r in (0, 1):
        assert (root / f"repeat{r}" / "results" / "predictions.csv").exists()
    # each repeat is a run of its own; repeats on other folds are not compared as paired runs
    capfd.readouterr()
    assert compare.main([str(root / "repeat0"), str(root / "repeat1"), "--out",
                         str(tmp_path / "c")]) == 2  # fmt: skip
    one_line_error(capfd.readouterr().err, "other protocol")
    # a resume with another number of repeats is refused; the same one reuses every repeat
    three = list(argv)
    three[three.index("--repeats") + 1] = "3"
    assert tune.main([*three, "--resume"]) == 2
    one_line_error(capfd.readouterr().err, "--repeats: 2 when the run started, 3 now")
    assert tune.main([*argv, "--resume"]) == 0
    assert "trial 1/1 started" not in capfd.readouterr().out
