"""The driver-side ledger of one outer fold's search: what makes ``tune --resume`` exact.

Tune saves its experiment state at most every few seconds, so after a kill it can be a step
behind: a finished trial comes back as running (and is re-run or downgraded). The ledger is
written by a Tune callback on the driver, synchronously, before Tune's next state save: for each
trial in order of creation, its number, its config, every result it reported (``folds_done``,
``cv_metric``, ``best_epoch``, ...) and how it ended (complete, stopped by ASHA at a rung, or an
error). ``STORAGE/NAME/ledger-outerK.json``, one JSON document rewritten atomically (through
``datasets.storage``, so it works on URIs too).

On resume nothing of Tune's saved state is trusted: a new Tuner is built whose Optuna study
holds the ledger's finished trials (with their values), whose ASHA rungs are replayed from the
ledger's results (scheduler state as data, never a pickle), and which runs only the trials still
missing; trials that were running at the kill are re-run from scratch with the same config.
TPE's proposals are reproducible because the sampler is seeded per trial number
(:class:`TrialSeededSampler`): the n-th proposal given the same history is the same.
"""

from __future__ import annotations

import json
import math
import re

import optuna
from ray.tune import Callback

from datasets import storage
from distributed.core.commands import UsageError

LEDGER_SCHEMA = 1
TRIAL_ERROR = "trial_error"  # a trial's last result when its configuration failed (not retried)
RESULT_KEYS = ("training_iteration", "fold_index", "epoch", "folds_done", "cv_metric", "best_epoch")


def ledger_path(root: str, outer: int) -> str:
    return storage.join(root, f"ledger-outer{outer}.json")


class Ledger:
    """The record of one outer fold's trials (see the module docstring). ``search`` is what the
    trials were drawn from (space and base config): a resume with another one is refused."""

    def __init__(self, path: str, outer: int, search: dict, attempt: int = 0, trials=None):
        self.path, self.outer, self.search, self.attempt = path, outer, search, attempt
        self.trials: list[dict] = list(trials or [])
        self.previous: list[dict] = []  # on resume: the stored trials, unfinished ones too
        self.scheduler: dict = {}
        self.seq = max((_last_seq(t) for t in self.trials), default=0)

    # ------------------------------------------------------------ storage
    @classmethod
    def open(cls, root: str, outer: int, search: dict, resume: bool) -> Ledger:
        """A new ledger, or on ``resume`` the stored one with only its finished trials kept
        (renumbered in order) and the attempt counter advanced."""
        path = ledger_path(root, outer)
        if not (resume and storage.exists(path)):
            return cls(path, outer, search)
        try:
            doc = json.loads(storage.read_bytes(path))
            if doc.get("schema") != LEDGER_SCHEMA:
                raise ValueError(f"schema {doc.get('schema')!r}, this code reads {LEDGER_SCHEMA}")
            trials, attempt, stored = doc["trials"], int(doc["attempt"]), doc["search"]
        except (ValueError, KeyError, TypeError) as err:
            raise UsageError(f"{path}: not a readable search ledger ({err})") from None
        if _canonical(stored) != _canonical(search):
            raise UsageError(
                f"{path}: this run was searched with another space or base config; "
                "resume it with the same options, or start a new --name"
            )
        finished = [dict(t) for t in trials if t.get("end")]
        for number, t in enumerate(finished):
            t["number"] = number
        ledger = cls(path, outer, search, attempt + 1, finished)
        ledger.previous = trials
        return ledger

    def save(self) -> None:
        doc = {
            "schema": LEDGER_SCHEMA,
            "outer": self.outer,
            "attempt": self.attempt,
            "search": self.search,
            "trials": self.trials,
            "scheduler": self.scheduler,
        }
        storage.atomic_write_bytes(self.path, json.dumps(doc, indent=1).encode())

    # ------------------------------------------------------------ records
    def finished(self) -> list[dict]:
        return [t for t in self.trials if t.get("end")]

    def add_trial(self, tune_id: str, config: dict) -> dict:
        entry = {
            "number": len(self.trials),
            "tune_trial_id": tune_id,
            "attempt": self.attempt,
            "config": _plain(config),
            "results": [],
            "end": None,
        }
        self.trials.append(entry)
        self.save()
        return entry

    def record_result(self, entry: dict, result: dict, n_inner: int) -> None:
        if result.get(TRIAL_ERROR):  # the trial ended with its own error (search.trial_driver)
            entry["end"] = self._end(entry, n_inner, str(result[TRIAL_ERROR]))
            self.save()
            return
        self.seq += 1
        entry["results"].append(
            {"seq": self.seq, **{k: _plain(result[k]) for k in RESULT_KEYS if k in result}}
        )
        if result.get("done"):  # the scheduler has just stopped it: it ends with this result
            entry["end"] = self._end(entry, n_inner)
        self.save()

    def record_end(self, entry: dict, n_inner: int, error: str | None = None) -> None:
        if entry["end"]:  # ended with its last result already (stopped by the scheduler)
            return
        entry["end"] = self._end(entry, n_inner, error)
        self.save()

    def _end(self, entry: dict, n_inner: int, error: str | None = None) -> dict:
        self.seq += 1
        folds = entry["results"][-1]["folds_done"] if entry["results"] else 0
        if error:
            return {"seq": self.seq, "state": "error", "rung": folds, "error": error[:500]}
        state = "complete" if folds >= n_inner else "stopped"
        return {"seq": self.seq, "state": state, "rung": folds, "error": ""}


def _last_seq(trial: dict) -> int:
    seqs = [r["seq"] for r in trial["results"]] + [(trial.get("end") or {}).get("seq", 0)]
    return max(seqs)


def _plain(value):
    """A JSON-able copy (numpy scalars to Python numbers, tuples to lists)."""
    text = json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v))
    return json.loads(text)


def _canonical(obj) -> str:
    return json.dumps(_plain(obj), sort_keys=True)


class LedgerCallback(Callback):
    """Tune callback (driver side) that writes every trial's start, results and end to the
    ledger as Tune processes them: the ledger never lags behind what Tune has seen."""

    def __init__(self, ledger: Ledger, scheduler, n_inner: int):
        self.ledger, self.scheduler, self.n_inner = ledger, scheduler, n_inner
        self.entries: dict[str, dict] = {}

    def _entry(self, trials, trial) -> dict:
        for t in trials:  # in order of creation
            if t.trial_id not in self.entries:
                self.entries[t.trial_id] = self.ledger.add_trial(t.trial_id, t.config)
            if t is trial:
                break
        return self.entries[trial.trial_id]

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._entry(trials, trial)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        entry = self._entry(trials, trial)
        self._snapshot()
        self.ledger.record_result(entry, result, self.n_inner)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._snapshot()
        self.ledger.record_end(self._entry(trials, trial), self.n_inner)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.ledger.record_end(self._entry(trials, trial), self.n_inner, error=trial_error(trial))

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        entry = self._entry(trials, trial)
        entry["restarts"] = entry.get("restarts", 0) + 1  # its process or node was lost
        self.ledger.save()

    def number(self, trial_id: str) -> int | None:
        """The ledger's number of a trial of this Tuner (kept across resumes), once started."""
        entry = self.entries.get(trial_id)
        return None if entry is None else entry["number"]

    def on_experiment_end(self, trials, **info) -> None:
        self._snapshot()
        self.ledger.save()

    def _snapshot(self) -> None:
        numbers = {tid: e["number"] for tid, e in self.entries.items()}
        self.ledger.scheduler = asha_state(self.scheduler, numbers)


def trial_error(trial) -> str:
    """What a failed trial raised, in one line (the last line of Tune's error file: the
    exception and its message), or "trial failed" when Tune wrote none."""
    path = getattr(trial, "error_file", None)
    try:
        with open(path) as f:
            lines = [line.strip() for line in f if line.strip()]
    except (OSError, TypeError):
        return "trial failed"
    # the file is "Failure # n (occurred at ...)" and the error's text, a traceback: its last
    # line is the exception; Ray's own frame lines carry ANSI colours
    last = lines[-1] if lines else "trial failed"
    return re.sub(r"\x1b\[[0-9;]*m", "", last)


# ---------------------------------------------------------------- ASHA as data


class _Ref:
    """What ASHA's bracket needs of a trial when its results are replayed: its key."""

    def __init__(self, trial_id: str):
        self.trial_id = trial_id


def replayed_id(number: int) -> str:
    return f"ledger-{number}"


def asha_state(scheduler, numbers: dict[str, int]) -> dict:
    """ASHA's rungs as JSON data: ``{"rungs": {milestone: {trial number: value}}}``."""
    rungs = {}
    for bracket in scheduler._brackets:
        for milestone, recorded in bracket._rungs:
            rung = rungs.setdefault(str(milestone), {})
            for tid, value in recorded.items():
                number = numbers.get(tid)
                if number is None and tid.startswith("ledger-"):
                    number = int(tid.split("-", 1)[1])
                rung[str(number)] = value
    return {"rungs": rungs, "stopped": scheduler._num_stopped}


def replay_asha(scheduler, ledger: Ledger, max_t: int) -> None:
    """Put the finished trials' results into a fresh ASHA scheduler, in the order Tune gave them
    to it, exactly as ``on_trial_result`` / ``on_trial_complete`` would have (maximising)."""
    events = []
    for t in ledger.finished():
        for r in t["results"]:
            events.append((r["seq"], t, r, False))
        if t["end"]["state"] != "error" and t["results"]:
            events.append((t["end"]["seq"], t, t["results"][-1], True))
    bracket = scheduler._brackets[0]  # distributed.search.driver uses one bracket
    for _, t, r, complete in sorted(events, key=lambda e: e[0]):
        ref = _Ref(replayed_id(t["number"]))
        value = r.get("cv_metric")
        if complete:
            bracket.on_result(ref, r["folds_done"], value)
        elif r["folds_done"] >= max_t:
            scheduler._num_stopped += 1  # on_trial_result stops at max_t without recording
        elif bracket.on_result(ref, r["folds_done"], value) == "STOP":
            scheduler._num_stopped += 1


# ---------------------------------------------------------------- Optuna


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """An Optuna sampler that samples trial n with ``TPESampler(seed=seed * 100003 + n)``.

    TPE keeps one random state for the whole study, so a study rebuilt after a kill would draw
    other numbers than the uninterrupted one; seeding per trial number makes the n-th proposal
    depend only on the history of trials 0..n-1, which the ledger restores exactly."""

    def __init__(self, seed: int):
        self.seed = seed
        self._by_number: dict[int, optuna.samplers.TPESampler] = {}

    def _for(self, trial) -> optuna.samplers.TPESampler:
        if trial.number not in self._by_number:
            self._by_number[trial.number] = optuna.samplers.TPESampler(
                seed=self.seed * 100003 + trial.number
            )
        return self._by_number[trial.number]

    def infer_relative_search_space(self, study, trial):
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self._for(trial).before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self._for(trial).after_trial(study, trial, state, values)
        self._by_number.pop(trial.number, None)

    def reseed_rng(self) -> None:  # the per-trial seeds are the point: keep them
        pass


def rebuild_study(storage_obj, study_name: str, ledger: Ledger, distributions: dict) -> None:
    """Make the study ``study_name`` hold exactly the ledger's finished trials, in order.

    A study left by a killed driver (a journal file) may hold a trial that never finished or one
    Tune would report again; it is deleted and written anew, so the journal that
    optuna-dashboard reads agrees with the ledger."""
    from optuna.trial import TrialState, create_trial

    try:
        optuna.delete_study(study_name=study_name, storage=storage_obj)
    except KeyError:
        pass  # no such study yet
    study = optuna.create_study(storage=storage_obj, study_name=study_name, direction="maximize")
    for t in ledger.finished():
        failed = t["end"]["state"] == "error" or not t["results"]
        value = None if failed else t["results"][-1]["cv_metric"]
        # Tune gives the searcher every result but the one its scheduler stopped the trial on
        reported = t["results"] if failed else t["results"][:-1]
        if value is not None and not math.isfinite(value):
            failed, value = True, None  # Optuna refuses NaN values; Tune's tell() failed too
        study.add_trial(
            create_trial(
                state=TrialState.FAIL if failed else TrialState.COMPLETE,
                value=value,
                params={k: t["config"][k] for k in distributions},
                distributions=distributions,
                intermediate_values={
                    r["training_iteration"]: r["cv_metric"]
                    for r in reported
                    if "training_iteration" in r and math.isfinite(r["cv_metric"])
                },
            )
        )


def pending_points(ledger_trials: list[dict], start: list[dict], space_keys) -> list[dict]:
    """Points the resumed search evaluates first: the configs of the trials that were running at
    the kill (in order), then the start points no trial had taken yet."""
    unfinished = [t for t in ledger_trials if not t.get("end")]
    points = [{k: t["config"][k] for k in space_keys} for t in unfinished]
    return points + [dict(p) for p in start[len(ledger_trials) :]]


def ledger_rows(ledger: Ledger, outer: int, space_keys, n_inner: int) -> list[dict]:
    """One row per trial (from the ledger, not Tune's ResultGrid): parameters, final running
    mean, folds finished, each finished fold's best epoch, the error if any."""
    rows = []
    for t in ledger.trials:
        results, end = t["results"], t.get("end") or {}
        last = results[-1] if results else {}
        folds = int(last.get("folds_done", 0))
        epochs, seen = [], 0
        for r in results:
            if r["folds_done"] > seen:
                epochs.append(int(r["best_epoch"]))
                seen = r["folds_done"]
        error = end.get("error", "") if end else "did not finish"
        rows.append(
            {
                "outer": outer,
                "trial": t["number"],
                **{k: t["config"].get(k) for k in space_keys},
                "cv_metric": last.get("cv_metric", float("nan")),
                "folds_done": folds,
                "complete": folds == n_inner and not error,
                "best_epochs": epochs,
                "error": error[:200],
            }
        )
    return rows
