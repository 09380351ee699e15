"""The search's console lines: one per event that matters, each with a count and elapsed/ETA.

A Tune callback on the driver (:class:`TrialEvents`) turns trial starts, finished inner folds,
early stops and ends into lines; :func:`outer_started`, :func:`outer_finished` and
:func:`result` are called by the search itself. The work done so far is counted in inner-fold
fits (a final retrain counts as ``FINAL_UNITS`` of them) for the remaining-time estimate. State
lives at module level: Tune pickles its callbacks with the experiment and restores them on
``--resume``, so the callback itself holds plain values only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from ray.tune import Callback

from distributed.core import console
from distributed.search.ledger import TRIAL_ERROR, trial_error

FINAL_UNITS = 2.0  # a retrain on a whole outer training fold ~ two inner-fold fits


class _Progress:
    def __init__(self) -> None:
        self.total = 0.0
        self.done = 0.0
        self.t0 = time.time()

    def line(self) -> str:
        """Elapsed since the command started; time left from the search's own pace so far."""
        elapsed = console.current().elapsed()
        if self.done <= 0 or self.total <= 0:
            return f"elapsed {console.clock(elapsed)}"
        left = (time.time() - self.t0) / self.done * max(self.total - self.done, 0.0)
        return f"elapsed {console.clock(elapsed)}, ~{console.clock(left)} left"


_progress = _Progress()


def start(n_outer: int, samples: int, n_inner: int) -> None:
    """The budget of a search: every trial on every inner fold, then one retrain per outer."""
    _progress.total = n_outer * (samples * n_inner + FINAL_UNITS)
    _progress.done = 0.0
    _progress.t0 = time.time()


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def params_text(params: dict) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in params.items())


class TrialEvents(Callback):
    """Tune callback: one console line per trial start, finished inner fold and trial end."""

    def __init__(
        self,
        *,
        outer_pos: str,
        samples: int,
        n_inner: int,
        metric: str,
        keys: list,
        number: Callable[[str], int | None] | None = None,
    ):
        self.outer_pos, self.samples, self.n_inner = outer_pos, samples, n_inner
        self.metric, self.keys, self.number = metric, list(keys), number
        self._folds: dict[str, int] = {}
        self._numbers: dict[str, int] = {}

    def __setstate__(self, state: dict) -> None:  # restored with the experiment: a fresh count
        self.__dict__.update(state)
        self._folds, self._numbers = {}, {}

    def _name(self, trials, trial) -> str:
        """``outer 1/2 trial 3/20``: the trial's number in its outer fold's ledger (``number``;
        a resumed search's trials keep theirs), else its place among this Tuner's trials."""
        if trial.trial_id not in self._numbers:
            known = self.number(trial.trial_id) if self.number is not None else None
            if known is not None:
                pos = known + 1
            else:
                ids = [t.trial_id for t in trials]
                pos = ids.index(trial.trial_id) + 1 if trial.trial_id in ids else len(ids)
            self._numbers[trial.trial_id] = pos
        return f"outer {self.outer_pos} trial {self._numbers[trial.trial_id]}/{self.samples}"

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        params = {k: trial.config.get(k) for k in self.keys}
        console.emit(f"{self._name(trials, trial)} started: {params_text(params)}")

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        folds = int(result.get("folds_done", 0))
        before = self._folds.get(trial.trial_id, 0)
        if folds <= before:
            return
        self._folds[trial.trial_id] = folds
        _progress.done += folds - before
        console.emit(
            f"{self._name(trials, trial)} inner fold {folds}/{self.n_inner}: val "
            f"{self.metric} {result.get('best', math.nan):.3f} (mean "
            f"{result.get('cv_metric', math.nan):.3f}) [{_progress.line()}]"
        )

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        last = trial.last_result or {}
        if last.get(TRIAL_ERROR):
            _progress.done += max(self.n_inner - self._folds.get(trial.trial_id, 0), 0)
            console.emit(
                f"{self._name(trials, trial)} FAILED: {last[TRIAL_ERROR]} (traceback in the log) "
                f"[{_progress.line()}]"
            )
            return
        folds = int(last.get("folds_done", 0))
        _progress.done += max(self.n_inner - folds, 0)  # folds ASHA spared us
        mean = last.get("cv_metric", math.nan)
        if folds < self.n_inner:
            what = f"stopped early (ASHA) after {folds}/{self.n_inner} inner folds"
        else:
            what = "finished"
        console.emit(
            f"{self._name(trials, trial)} {what}: mean val {self.metric} {mean:.3f} "
            f"[{_progress.line()}]"
        )

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        last = trial.last_result or {}
        _progress.done += max(self.n_inner - int(last.get("folds_done", 0)), 0)
        where = f"; see {trial.error_file}" if getattr(trial, "error_file", None) else ""
        console.emit(f"{self._name(trials, trial)} FAILED{where}")

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        failures = trial.run_metadata.num_failures
        why = trial_error(trial).split(". ")[0][:120]  # Ray's first sentence; the rest: the log
        console.emit(
            f"{self._name(trials, trial)} lost its process ({why}); restarting "
            f"it from its last checkpoint (retry {failures} of {trial.max_failures})"
        )


def trials_failed(pos: str, n: int, reason: str) -> None:
    """One line per distinct reason the trials of an outer fold kept no score."""
    console.emit(f"outer fold {pos}: {n} trial{'s' if n != 1 else ''} failed with: {reason}")


def outer_started(pos: str, outer: int, samples: int, resumed: bool) -> None:
    what = "resuming the search" if resumed else f"searching {samples} configurations"
    console.emit(f"outer fold {pos} (fold {outer}): {what} [{_progress.line()}]")


def final_started(pos: str, epochs: int, params: dict) -> None:
    console.emit(
        f"outer fold {pos}: retraining the best configuration on the whole training fold "
        f"({epochs} epochs; {params_text(params)})"
    )


def outer_finished(pos: str, summary: dict, metric: str, inner: float) -> None:
    _progress.done += FINAL_UNITS
    console.emit(
        f"outer fold {pos} finished: test WAR {summary['war']:.3f} UAR {summary['uar']:.3f} "
        f"(inner {metric} {inner:.3f}) [{_progress.line()}]"
    )


def callbacks(plan, outer: int, number: Callable[[str], int | None] | None = None) -> list:
    """The driver-side Tune callbacks of one outer fold's search: our console lines (trials
    named by ``number``, their number in the ledger), and with ``plan.mlflow`` Ray's MLflow
    logger (one MLflow run per trial, every reported epoch)."""
    n_inner = len(plan.protocol.fold(outer).inner)
    pos = f"{plan.outers.index(outer) + 1}/{len(plan.outers)}"
    out = [
        TrialEvents(
            outer_pos=pos,
            samples=plan.samples,
            n_inner=n_inner,
            metric=plan.base.select_metric.upper(),
            keys=list(plan.space.space),
            number=number,
        )
    ]
    if plan.mlflow:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        name = plan.root.rstrip("/").rsplit("/", 1)[-1]
        out.append(
            MLflowLoggerCallback(
                tracking_uri=plan.mlflow,
                experiment_name=f"{name}-outer{outer}",
                tags={"branch": plan.base.branch, "outer_fold": str(outer)},
                save_artifact=False,
            )
        )
    return out
