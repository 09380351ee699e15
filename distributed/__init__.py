"""The jobs a user runs and their machinery.

The modules at this level are the entry points (``python -m distributed.<verb>``: preprocess,
folds, train, tune, evaluate, predict, export, fusion, compare, env_report). The machinery
lives in rooms named for what they do:

- ``core``: what every command shares (errors and number types, typed configs, the console,
  starting Ray, the check of resource requests);
- ``training``: the Ray-free loop, its hosts, steps, checkpoints, the streamed feed, and the
  Ray adapters (``ray_*``) and ``launch`` (``fit_folds``) that run it;
- ``search``: the nested-CV driver, search space, ledger, events, run record, repeats;
- ``inference``: the Predictor, batch prediction, outputs, scoring, late-fusion rules;
- ``results``: metrics, plots, the search report, the comparison of runs;
- ``preprocessing``: the Ray tasks of preprocessing and the synthetic demo sets.

``core``, ``training`` (but its ``ray_*`` adapters), ``inference`` and ``results`` import no
Ray (``tests/test_layout.py``).
"""
