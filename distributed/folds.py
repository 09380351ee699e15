"""Folds as a step of their own: (re)write an evaluation protocol of a shard folder.

Reads only the id, subject and label columns of the shards (never the frames) and writes
``SHARDS/protocols/<name>.json``: outer folds with their ``train`` and ``test`` ids and inner
``train``/``val`` splits drawn inside each outer training set (subject-disjoint when the items
have subjects, class-stratified otherwise). Several protocols sit side by side;
``train``/``tune``/``evaluate`` take ``--protocol NAME`` (default: the manifest's, which
preprocessing wrote, or ``--default`` here).

- ``subjects``: subject-independent, class-stratified nested folds.
- ``lists``: the reference's ``trainN.txt``/``evalN.txt`` lists (the paper's CK+ 10 folds):
  test = evalN, train = trainN; a list id missing from the shards, a label that disagrees with the
  shard's, or overlapping lists are refused with the file and line.
- ``dfew``, ``mafw``, ``ferv39k``: the release's official sets, read from its split files under
  ``--source`` (default: the source the shards were preprocessed from). Listed clips that
  preprocessing skipped are left out and counted.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, replace

from datasets import protocols, shards
from datasets.layouts import RELEASES
from datasets.manifest import (
    Manifest,
    list_protocols,
    read_manifest,
    write_manifest,
    write_protocol,
)
from datasets.protocols import Protocol, ProtocolError
from datasets.records import BadInput, SourceItem
from distributed.core import commands

KEYS = ("subjects", "lists", *RELEASES)


@dataclass(frozen=True)
class FoldsArgs:
    """How to build a protocol (the parsed command line of ``distributed.folds``)."""

    shards: str
    protocol: str | None = None
    folds: int = 5
    inner_folds: int = 3
    seed: int = 0
    fold_lists: str | None = None
    source: str | None = None
    default: bool = False
    list: bool = False


def shard_items(root: str) -> list[SourceItem]:
    """(id, subject, label name, source) of every row, read from the shards' small columns."""
    table = shards.read_table(root, columns=["id", "subject", "label_name", "source"])
    cols = [table[c].to_pylist() for c in ("id", "subject", "label_name", "source")]
    return [SourceItem(i, s, lab, src) for i, s, lab, src in zip(*cols)]


def _official(key: str, source: str, items: list[SourceItem], args: FoldsArgs) -> Protocol:
    scan = RELEASES[key].scan(source)
    have = {it.id for it in items}
    folds = [(tuple(i for i in f.train if i in have), tuple(i for i in f.test if i in have))
             for f in scan.folds]  # fmt: skip
    listed = {i for f in scan.folds for i in (*f.train, *f.test)}
    missing = len(listed - have)
    extra = f"; {missing} listed clip(s) not in the shards (skipped when preprocessing)"
    return protocols.official(
        folds,
        [it for it in items if it.id in listed],
        args.inner_folds,
        args.seed,
        name=scan.name,
        description="outer folds: the release's official train/test sets"
        + (extra if missing else ""),
    )


def build_protocol(args: FoldsArgs, manifest: Manifest, items: list[SourceItem]) -> Protocol:
    """The protocol ``args.protocol`` of these items (``ProtocolError`` / ``BadInput`` when the
    data cannot fill it or the lists disagree with the shards)."""
    key = args.protocol
    if key == "subjects":
        # label indices, as preprocessing always drew these folds (the greedy stratification
        # breaks ties by class order)
        table = shards.read_table(args.shards, columns=["id", "label"])
        index = dict(zip(table["id"].to_pylist(), table["label"].to_pylist()))
        labels = [index[it.id] for it in items]
        return protocols.subjects([it.id for it in items], [it.subject for it in items], labels,
                                  args.folds, args.inner_folds, args.seed)  # fmt: skip
    if key == "lists":
        from datasets.reference_lists import reference_folds

        if not args.fold_lists:
            raise commands.UsageError(
                "--protocol lists needs --fold-lists DIR (trainN.txt/evalN.txt)"
            )
        ref = reference_folds(args.fold_lists, items, manifest.classes)
        if ref.unlisted:
            print(f"note: {len(ref.unlisted)} item(s) of the shards are in no list and take no "
                  f"part: {', '.join(ref.unlisted[:5])}", file=sys.stderr)  # fmt: skip
        listed = {i for f in ref.folds for i in (*f.train, *f.test)}
        name = "CK+ 10-fold, reference lists" if manifest.layout == "ckplus" else (
            f"{len(ref.folds)}-fold, reference lists")  # fmt: skip
        return protocols.from_lists([(f.train, f.test) for f in ref.folds],
                                    [it for it in items if it.id in listed], args.inner_folds,
                                    args.seed, name=name)  # fmt: skip
    if key in RELEASES:
        source = args.source or manifest.source
        if not source:
            raise commands.UsageError(
                f"--protocol {key} needs --source (the release's root folder)"
            )
        return _official(key, source, items, args)
    raise commands.UsageError(f"unknown protocol {key!r}; choose one of {', '.join(KEYS)}")


def write_folds(args: FoldsArgs) -> tuple[str, Protocol, float]:
    """Build and store the protocol; returns (path, protocol, seconds)."""
    t0 = time.perf_counter()
    manifest = read_manifest(args.shards)
    items = shard_items(args.shards)
    protocol = build_protocol(args, manifest, items)
    listed = {i for f in protocol.outer for i in (*f.train, *f.test)}
    by_id = {it.id: it.subject for it in items if it.id in listed}
    subjects = by_id if args.protocol in ("subjects", "lists") and all(by_id.values()) else None
    protocol.validate(sorted(listed), subjects)
    path = write_protocol(args.shards, args.protocol, protocol)
    if args.default or manifest.protocol is None:
        write_manifest(args.shards, replace(manifest, protocol=args.protocol))
    return path, protocol, time.perf_counter() - t0


def check_fold_flags(folds: int, inner_folds: int, seed: int) -> None:
    """Refuse fold counts (and a seed) that make no sense, before any work (``UsageError``)."""
    commands.at_least("--folds", folds, 2, "outer folds")
    commands.at_least("--inner-folds", inner_folds, 2, "inner train/val splits per outer fold")
    commands.at_least("--seed", seed, 0)


def print_warnings(protocol: Protocol) -> None:
    """Where the data made the protocol depart from what was asked, one line each."""
    for line in protocol.warnings:
        print(f"warning: {line}", file=sys.stderr)


def rewrite_hint(shards_root: str, key: str) -> str:
    """The ``distributed.folds`` command that rewrites protocol ``key`` with other counts (only
    the protocol the data was preprocessed for: an official split names no subjects)."""
    extra = {"subjects": " --folds K", "lists": " --fold-lists DIR"}.get(key, "")
    return f"`python -m distributed.folds {shards_root} --protocol {key}{extra} --inner-folds J`"


def describe(protocol: Protocol) -> str:
    sizes = ", ".join(f"{len(f.test)}" for f in protocol.outer)
    inner = len(protocol.outer[0].inner) if protocol.outer else 0
    return (f"{protocol.name}: {len(protocol.outer)} outer folds (test sizes {sizes}), "
            f"{inner} inner splits each")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m distributed.folds",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("shards", help="shard folder written by distributed.preprocess")
    p.add_argument("--protocol", choices=KEYS, help="which protocol to (re)write")
    p.add_argument("--folds", type=int, default=5, help="outer folds (subjects)")
    p.add_argument("--inner-folds", type=int, default=3, help="inner train/val splits per fold")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fold-lists", help="folder of trainN.txt / evalN.txt (lists)")
    p.add_argument("--source", help="release root with the official split files (dfew, ...)")
    p.add_argument("--default", action="store_true", help="make it the shards' default protocol")
    p.add_argument("--list", action="store_true", help="list the stored protocols and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = FoldsArgs(**vars(build_parser().parse_args(argv)))

    def body() -> int:
        check_fold_flags(args.folds, args.inner_folds, args.seed)
        if args.list or not args.protocol:
            manifest = read_manifest(args.shards)
            for key in list_protocols(args.shards):
                mark = " (default)" if key == manifest.protocol else ""
                print(f"{key}{mark}")
            if not args.protocol and not args.list:
                print("choose --protocol to write one", file=sys.stderr)
            return 0
        try:
            path, protocol, seconds = write_folds(args)
        except ProtocolError as err:
            raise commands.UsageError(f"{args.shards}: {err}") from None
        print_warnings(protocol)
        print(f"{describe(protocol)} -> {path} ({seconds:.2f} s)")
        return 0

    return commands.run(body)


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["BadInput", "FoldsArgs", "build_protocol", "write_folds"]
