"""A ``distributed.tune`` driver that SIGKILLs itself at one chosen point (for the resume tests).

    python tests/resume_driver.py POINT TUNE_ARGS...

POINT is where the driver dies, by ``os.kill(os.getpid(), SIGKILL)`` from a wrapper of the real
code (production code has no test switches):

- ``none``: run to the end;
- ``trial-start:N``: as trial N is created, before the ledger records it;
- ``result:N:K``: right after the ledger records trial N's K-th result (its next epoch runs);
- ``trial-end:N``: right after the ledger records that trial N ended, before Tune's next
  experiment-state save (the moment that used to re-run or downgrade the trial);
- ``final``: during the final retrain: at its first reported epoch (in-process), or once its
  first checkpoint is written (worker group).
"""

from __future__ import annotations

import glob
import os
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install(point: str) -> None:
    from distributed.search import driver, ledger

    kind, *args = point.split(":")
    if kind == "none":
        return
    if kind == "trial-start":
        number = int(args[0])
        real_add = ledger.Ledger.add_trial

        def add_trial(self, tune_id, config):
            if len(self.trials) == number:
                die()
            return real_add(self, tune_id, config)

        ledger.Ledger.add_trial = add_trial
    elif kind in ("result", "trial-end"):
        number = int(args[0])
        count = int(args[1]) if kind == "result" else None
        real_result, real_end = ledger.Ledger.record_result, ledger.Ledger.record_end

        def check(entry):
            if entry["number"] != number:
                return
            if kind == "result" and len(entry["results"]) == count and not entry["end"]:
                die()
            if kind == "trial-end" and entry["end"]:
                die()

        def record_result(self, entry, result, n_inner):
            real_result(self, entry, result, n_inner)
            check(entry)

        def record_end(self, entry, n_inner, error=None):
            real_end(self, entry, n_inner, error)
            check(entry)

        ledger.Ledger.record_result = record_result
        ledger.Ledger.record_end = record_end
    elif kind == "final":
        real_fit = driver.fit_folds

        def fit_folds(cfg, data, **kwargs):
            if "final" in kwargs["name"]:
                # in-process fit: die at its first reported epoch, in the loop's own thread (a
                # watcher polling for the first checkpoint can lose the race with a fit whose
                # only checkpoint is its last epoch's); on a worker group: the watcher
                kwargs["on_report"] = lambda metrics: die()
                pattern = os.path.join(kwargs["storage_path"], kwargs["name"], "checkpoint_*")

                def watch():
                    while not glob.glob(pattern):
                        time.sleep(0.1)
                    die()

                threading.Thread(target=watch, daemon=True).start()
            return real_fit(cfg, data, **kwargs)

        driver.fit_folds = fit_folds
    else:
        raise SystemExit(f"unknown kill point {point!r}")


if __name__ == "__main__":
    install(sys.argv[1])
    from distributed import tune

    sys.exit(tune.main(sys.argv[2:]))
