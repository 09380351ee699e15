"""Late fusion of the facial and body-gesture branches, with the weight chosen on inner folds.

Items that have both modalities are paired by id (``<label>/<stem>``: preprocess one folder of
videos once for faces and once with ``--pose mediapipe`` for bodies, or write both sources with
the same label folders and stems). Both shard folders must hold the same default protocol (the
same ids, subjects and labels give the same folds); each branch trains on the fold's ids present
in its own shards. With ``--facial-run``/``--gesture-run`` (finished ``distributed.tune`` runs on
those shards) each branch uses the configuration its search chose for each outer fold and its
final model, so face, body and fused nested-CV figures land in one report. Per outer fold k:

1. on each inner split j of the outer training fold, both branches are trained for a fixed number
   of epochs on the inner training rows and predict the inner validation rows;
2. the weight w is chosen on the pooled inner-validation predictions by a grid over [0, 1]
   (UAR, ties go to the w nearest 0.5) -- the outer test fold is never read here;
3. both branches are trained on the whole outer training fold (same epochs; or a tune run's
   final model is used) and predict the outer test fold, scored face-only, body-only and fused
   with that w.

Fusion rule (default ``log``, a weighted product of experts):
``p ∝ exp(w·log p_face + (1-w)·log p_body)``. A branch that rules a class out (p ≈ 0) vetoes it,
which is what combining "which pair" from one modality and "which member" from the other needs;
``linear`` (``p = w·p_face + (1-w)·p_body``) is available for comparison. Every split of every
outer fold of one branch is trained in ONE Ray Train fit (the folds run in sequence inside it), so
the fixed start-up cost is paid twice in total, not once per split; a controller-side callback
keeps each split's final model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from datasets import shards, storage
from datasets.manifest import read_manifest, read_protocol
from datasets.protocols import Protocol
from distributed.core import console
from distributed.core.console import clock, current
from distributed.inference.late_fusion import (
    EPS,
    RULES,
    choose_weight,
    fuse,
    markdown,
    pair,
    scores,
)

__all__ = ["EPS", "RULES", "choose_weight", "fuse", "markdown", "pair", "run_fusion", "scores"]


def plan_splits(protocol: Protocol, folds: int | None, inner: int | None) -> list[dict]:
    """[{outer, inner (None = the whole outer training fold), train ids, eval ids}] in order."""
    outer = protocol.outer[: folds or None]
    plan = []
    for k, fold in enumerate(outer):
        for j, split in enumerate(fold.inner[: inner or None]):
            plan.append({"outer": k, "inner": j, "train": split.train, "eval": split.val})
        plan.append({"outer": k, "inner": None, "train": fold.train, "eval": fold.test})
    return plan


def branch_predictions(
    cfgs: dict,
    root: str,
    plan: list[dict],
    *,
    workers: int,
    storage_path: str,
    name: str,
    final_models: dict | None = None,
) -> list[tuple[list[str], np.ndarray, np.ndarray]]:
    """Train one branch on the splits of ``plan`` and predict each split's eval ids.

    ``cfgs`` maps each outer fold to its configuration (the same one for all when the branch is
    not tuned: then every split trains in ONE fit). ``final_models`` (outer fold -> model file,
    a tune run's ``models/outer{k}.pt``) replaces training on the outer training fold: the test
    predictions come from that model."""
    from distributed.inference.evaluation import predict_fold
    from distributed.training.checkpoint import TrainedOn, load_model
    from distributed.training.launch import FoldSpec, Resources, fit_folds, prepare_datasets

    have = set(shards.read_table(root, columns=["id"])["id"].to_pylist())
    final_models = final_models or {}
    todo = [
        n for n, s in enumerate(plan) if not (s["inner"] is None and s["outer"] in final_models)
    ]
    groups: dict[int, list[int]] = {}  # one fit per distinct configuration
    for n in todo:
        key = next(k for k in cfgs if cfgs[k] == cfgs[plan[n]["outer"]])
        groups.setdefault(key, []).append(n)
    paths = {}
    for key, members in groups.items():
        cfg = cfgs[key]
        specs = [
            FoldSpec(
                tuple(i for i in plan[n]["train"] if i in have),
                None,
                TrainedOn(plan[n]["outer"], plan[n]["inner"]),
            )
            for n in members
        ]
        run = f"{name}-{key}" if len(groups) > 1 else name
        models = storage.join(storage_path, run, "split-models")
        fit_folds(
            cfg,
            prepare_datasets(root, specs),
            resources=Resources(workers),
            storage_path=storage_path,
            name=run,
            keep_models=models,
        )
        for j, n in enumerate(members):
            paths[n] = storage.join(models, f"split{j}.pt")
    for n, s in enumerate(plan):
        if s["inner"] is None and s["outer"] in final_models:
            paths[n] = final_models[s["outer"]]
    out = []
    for n, s in enumerate(plan):
        if not storage.exists(paths[n]):
            raise RuntimeError(f"{paths[n]}: split model missing")
        mf = load_model(storage.read_bytes(paths[n]), name=paths[n])
        out.append(predict_fold(mf, root, [i for i in s["eval"] if i in have]))
    return out


def tuned_configs(run: str, outers) -> tuple[dict, dict]:
    """(outer -> the configuration a ``distributed.tune`` run chose for it, outer -> its final
    model file), from the run's ``results/best_config.json`` and ``models/``."""
    from distributed.core.config import TrainConfig

    path = storage.join(run, "results", "best_config.json")
    if not storage.exists(path):
        raise ValueError(
            f"{path}: not found; give the folder of a finished distributed.tune run (STORAGE/NAME)"
        )
    best = json.loads(storage.read_bytes(path))
    base = TrainConfig.from_dict(best["base_config"], where=path)
    chosen = {e["outer"]: e for e in best["per_outer_fold"]}
    missing = sorted(set(outers) - set(chosen))
    if missing:
        raise ValueError(f"{run}: its search did not run outer fold(s) {missing}")
    cfgs = {
        k: base.override(where=path, **chosen[k]["params"], epochs=chosen[k]["epochs"])
        for k in outers
    }
    return cfgs, {k: storage.join(run, "models", f"outer{k}.pt") for k in outers}


def run_fusion(
    facial_cfg,
    gesture_cfg,
    facial_root: str,
    gesture_root: str,
    *,
    folds: int | None = None,
    inner: int | None = None,
    workers: int = 1,
    storage_path: str,
    rule: str = "log",
    name: str = "fusion",
    facial_run: str | None = None,
    gesture_run: str | None = None,
) -> dict:
    """The whole protocol of the module docstring; returns the report as a dict. With
    ``facial_run`` / ``gesture_run`` (folders of finished ``distributed.tune`` runs on these
    shards) a branch uses the configuration its search chose for each outer fold, and that
    search's final model for the outer test fold."""
    fm, gm = read_manifest(facial_root), read_manifest(gesture_root)
    if fm.classes != gm.classes:
        raise ValueError(f"class lists differ: faces {fm.classes}, gestures {gm.classes}")
    classes, k = list(fm.classes), len(fm.classes)
    protocol = read_protocol(facial_root, fm)[1]
    if protocol != read_protocol(gesture_root, gm)[1]:
        raise ValueError(
            f"{facial_root} and {gesture_root} hold different folds; write the same "
            "protocol into both (python -m distributed.folds)"
        )
    plan = plan_splits(protocol, folds, inner)
    outers = sorted({s["outer"] for s in plan})
    kw = dict(workers=workers, storage_path=storage_path)
    runs = {}
    for key, cfg, run in (("face", facial_cfg, facial_run), ("body", gesture_cfg, gesture_run)):
        runs[key] = tuned_configs(run, outers) if run else ({o: cfg for o in outers}, None)
    con = current()  # one clock for the lines below, inside or outside a command's capture
    splits = sum(1 for s in plan if s["inner"] is not None)
    for key in ("face", "body"):
        source = "its search's configs and final models" if runs[key][1] else "a fixed config"
        con.emit(f"{key}: {splits} inner splits and {len(outers)} outer folds, {source}")
    con.emit(f"training the face branch [elapsed {clock(con.elapsed())}]")
    face = branch_predictions(
        runs["face"][0],
        facial_root,
        plan,
        name=f"{name}-facial",
        final_models=runs["face"][1],
        **kw,
    )
    con.emit(f"training the body branch [elapsed {clock(con.elapsed())}]")
    body = branch_predictions(
        runs["body"][0],
        gesture_root,
        plan,
        name=f"{name}-gesture",
        final_models=runs["body"][1],
        **kw,
    )
    facial_cfg, gesture_cfg = runs["face"][0][outers[0]], runs["body"][0][outers[0]]
    paired = [pair(*f, *b) for f, b in zip(face, body)]  # (ids, y, p_face, p_body) per split
    report = {
        "classes": classes,
        "rule": rule,
        "folds": [],
        "facial": facial_cfg.to_dict(),
        "gesture": gesture_cfg.to_dict(),
    }
    pooled = {"y": [], "face": [], "body": [], "fused": []}
    items = []  # (outer, ids, y, {branch: probabilities}) per outer test fold
    for outer in sorted({s["outer"] for s in plan}):
        inner_idx = [
            n for n, s in enumerate(plan) if s["outer"] == outer and s["inner"] is not None
        ]
        test_idx = next(n for n, s in enumerate(plan) if s["outer"] == outer and s["inner"] is None)
        y_in = np.concatenate([paired[n][1] for n in inner_idx])
        w, table = choose_weight(
            y_in,
            np.concatenate([paired[n][2] for n in inner_idx]),
            np.concatenate([paired[n][3] for n in inner_idx]),
            rule,
        )
        ids, y, pf, pb = paired[test_idx]
        fused = fuse(pf, pb, w, rule)
        report["folds"].append(
            {
                "outer": outer,
                "w": w,
                "inner_n": int(len(y_in)),
                "inner_grid": table,
                "face": scores(y, pf, k),
                "body": scores(y, pb, k),
                "fused": scores(y, fused, k),
                "test_ids": ids,
            }
        )
        for key, p in (("face", pf), ("body", pb), ("fused", fused)):
            pooled[key].append(p)
        pooled["y"].append(y)
        items.append((outer, ids, y, {"face": pf, "body": pb, "fused": fused}))
    y_all = np.concatenate(pooled["y"])
    report["summary"] = {}
    for key in ("face", "body", "fused"):
        per_fold = [f[key] for f in report["folds"]]
        report["summary"][key] = {
            "pooled": scores(y_all, np.concatenate(pooled[key]), k),
            **{f"{m}_mean": float(np.mean([s[m] for s in per_fold])) for m in ("war", "uar")},
            **{f"{m}_std": float(np.std([s[m] for s in per_fold])) for m in ("war", "uar")},
        }
    report["intervals"] = fusion_intervals(items, classes)
    report["predictions"] = [
        {"outer": o, "id": i, "true": classes[int(t)],
         **{f"{key}_predicted": classes[int(np.argmax(p[n]))] for key, p in probs.items()},
         **{f"{key}_p_{c}": round(float(p[n][j]), 6) for key, p in probs.items()
            for j, c in enumerate(classes)}}
        for o, ids, y, probs in items for n, (i, t) in enumerate(zip(ids, y))
    ]  # fmt: skip
    return report


def fusion_intervals(items: list, classes: list[str]) -> dict:
    """95% bootstrap intervals (test items resampled within each outer fold, the same draw for
    every branch) of each branch's mean WAR and UAR, and of fused minus the better branch."""
    from distributed.results.comparison import Fold, Run, bootstrap, interval

    runs = [
        Run(key, "", classes, {o: Fold(np.asarray(ids), np.asarray(y), probs[key].argmax(1))
                               for o, ids, y, probs in items})
        for key in ("face", "body", "fused")
    ]  # fmt: skip
    outers = [o for o, *_ in items]
    boot = bootstrap(runs, outers)
    out = {r.name: {m: interval(boot[i, :, j]) for j, m in enumerate(("war", "uar"))}
           for i, r in enumerate(runs)}  # fmt: skip
    best = max((0, 1), key=lambda i: boot[i, :, 1].mean())
    out["fused_minus_best"] = {
        "branch": runs[best].name,
        **{m: interval(boot[2, :, j] - boot[best, :, j]) for j, m in enumerate(("war", "uar"))},
    }
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m distributed.fusion",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--facial-shards", required=True)
    p.add_argument("--gesture-shards", required=True)
    p.add_argument("--folds", type=int, default=None, help="use the first K outer folds (all)")
    p.add_argument("--inner", type=int, default=None, help="use the first J inner splits (all)")
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers per fit")
    p.add_argument("--storage", default="runs", help="Ray Train storage path")
    p.add_argument("--out", default=None, help="report folder (default: STORAGE/NAME)")
    p.add_argument("--name", default="fusion")
    p.add_argument("--rule", choices=RULES, default="log")
    p.add_argument(
        "--facial-run",
        help="a finished distributed.tune run (STORAGE/NAME) on the "
        "facial shards: its chosen configs and final models",
    )
    p.add_argument("--gesture-run", help="the same for the gesture shards")
    p.add_argument("--facial-config", help="JSON/YAML TrainConfig overrides (facial)")
    p.add_argument("--gesture-config", help="JSON/YAML TrainConfig overrides (gesture)")
    p.add_argument("--epochs", type=int, default=None, help="epochs for both branches")
    p.add_argument("--smoke", action="store_true", help="tiny models, 2-3 epochs, 1 fold")
    p.add_argument(
        "--verbose", action="store_true", help="Ray's and the workers' output on the console"
    )
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or local)")
    p.add_argument("--num-cpus", type=float, default=None, help="CPUs of a local Ray instance")
    return p


def main(argv: list[str] | None = None) -> int:
    from branches import get_branch
    from distributed.core import commands
    from distributed.core.config import default_config, load_overrides
    from distributed.core.runtime import init_ray

    args = build_parser().parse_args(argv)

    def body() -> int:
        cfgs = {}
        # Fusion pairs the two branches of the paper: faces and bodies.
        for key, path in (("facial", args.facial_config), ("gesture", args.gesture_config)):
            over = dict(get_branch(key).smoke) if args.smoke else {}
            over.update(load_overrides(path, key))
            if args.epochs:
                over["epochs"] = args.epochs
            cfgs[key] = default_config(key, **over)
        folds = 1 if args.smoke and args.folds is None else args.folds
        inner = 1 if args.smoke and args.inner is None else args.inner
        store = args.storage if storage.is_uri(args.storage) else os.path.abspath(args.storage)
        out = args.out or storage.join(store, args.name)
        storage.ensure_writable_dir(out, "report folder")
        log_dir, note = console.log_dir_of(out, args.name)
        with console.capture(log_dir, "fusion", verbose=args.verbose) as con:
            if con.log_path:
                con.emit(f"log: {con.log_path}{note} (Ray and workers; --verbose shows them here)")
            con.emit(f"fusion: {args.facial_shards} + {args.gesture_shards}, rule {args.rule}")
            init_ray(args.address, args.num_cpus)
            report = run_fusion(
                cfgs["facial"],
                cfgs["gesture"],
                args.facial_shards,
                args.gesture_shards,
                folds=folds,
                inner=inner,
                workers=args.workers,
                storage_path=store,
                rule=args.rule,
                name=args.name,
                facial_run=args.facial_run,
                gesture_run=args.gesture_run,
            )
        from distributed.results.report import _csv

        rows = report.pop("predictions")
        storage.atomic_write_bytes(storage.join(out, "predictions.csv"), _csv(rows))
        storage.atomic_write_bytes(
            storage.join(out, "fusion.json"), json.dumps(report, indent=2).encode()
        )
        text = markdown(report)
        storage.atomic_write_bytes(storage.join(out, "fusion.md"), text.encode())
        print(text)
        print(f"report: {storage.join(out, 'fusion.md')}")
        return 0

    try:
        return commands.run_stoppable(body, commands.start_over("distributed.fusion", argv))
    except ValueError as err:  # mismatched shard folders or runs: the message says which
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
