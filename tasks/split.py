"""The `split` step: carve seeded held-out evaluation rows out of the deduplicated records.

A row goes to `records_eval` when a seeded 64-bit hash of (seed, source, group) falls
below a cutoff of its (source, task); otherwise to `records_train`. The group is the row's
`example_id` (its underlying source example) or, when that is null, its `record_id`, so
every template variant of one FLAN/P3 example lands on the same side, even where the
reader names a task per template (promptsource): with `eval_fraction` the cutoff is the
same for every task. (With `eval_rows` the cutoffs differ per task, so variants of one
example in different tasks can still be split; prefer `eval_fraction` for promptsource.)

Why a hash and not a shuffle: a row's side depends only on its own key and the seed,
never on the other rows, so the split streams batch by batch, is identical on any
machine, and adding data later does not move rows that were already assigned.

- `eval_fraction` f: cutoff = f * 2**64 for every (source, task); each group is held out
  with probability f, so a tiny task may get a few more or fewer rows than f * n.
- `eval_rows` n (overrides `eval_fraction`): per (source, task), groups are taken in
  hash order while the held-out rows stay <= n, and at least one group always stays in
  training. This needs one extra pass over (source, task, group) to find the cutoffs.

Few-shot exemplars (FLAN CoT) must come from the training side, so the side of an example
is known before convert renders them: `held_out_before_split` is this step's decision as
a function of (seed, source, example_id), which convert uses to leave held-out examples
out of exemplar pools. With `eval_rows` that decision needs every row, so instead the
examples of exemplar pools (records whose meta has `exemplar_pool: true`) are kept in
training and not counted toward `eval_rows`.

Nothing is dropped: rows in = train + eval, and `rejects` is written empty.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from tasks import markdown
from tasks.config import SplitConfig, as_recipe
from tasks.dedup import survivors
from tasks.schema import RECORDS, REJECTS
from tasks.step import Progress, input_ref, logger, run_step
from tasks.store import ArtifactStore

STEP = "split"
VERSION = 3  # 3: eval_rows keeps exemplar-pool examples in training; 2: the task is not hashed
_KEY_COLUMNS = ["record_id", "source", "task", "example_id", "meta"]
#: Meta key (true) of records whose example serves as a few-shot exemplar of other rows: with
#: eval_rows the split keeps such examples in training (see held_out_before_split).
PINNED = "exemplar_pool"
_FULL = 1 << 64


def group_hash(seed: int, source: str, group: str) -> int:
    """The seeded 64-bit hash that decides a group's side."""
    # \x1f (unit separator) cannot be confused with text inside the parts.
    # The task is not hashed: promptsource names a task per template, and the template
    # variants of one example must land on the same side (no leak by template: docs/ARCHITECTURE.md, the canonical record).
    return xxhash.xxh64_intdigest(f"{seed}\x1f{source}\x1f{group}".encode("utf-8"))


def fraction_cutoff(cfg: SplitConfig) -> int:
    """eval_fraction mode: groups whose hash is below this are held out."""
    return min(int((cfg.eval_fraction or 0.0) * _FULL), _FULL)


def held_out_before_split(cfg: SplitConfig, source: str, example_id: str) -> bool:
    """Whether the split will hold this example out, known before it runs (convert draws
    few-shot exemplars only from examples for which this is False).

    eval_fraction: exactly the split's decision (a pure function of seed, source and
    example). eval_rows: False for every example, because the cutoffs depend on all rows;
    the split then keeps the examples of exemplar pools (PINNED in their meta) in training."""
    if cfg.eval_rows is not None:
        return False
    return group_hash(cfg.seed, source, example_id) < fraction_cutoff(cfg)


def group_hashes(seed: int, batch: pa.RecordBatch | pa.Table) -> tuple[list[tuple[str, str]], np.ndarray]:
    """Per row: its (source, task) and the seeded uint64 hash of (seed, source, group)."""
    sources = batch.column("source").to_pylist()
    tasks = batch.column("task").to_pylist()
    groups = pc.coalesce(batch.column("example_id"), batch.column("record_id")).to_pylist()
    keys, hashes = [], np.empty(len(sources), dtype=np.uint64)
    for i, (s, t, g) in enumerate(zip(sources, tasks, groups)):
        s, t = s or "", t or ""
        keys.append((s, t))
        hashes[i] = group_hash(seed, s, g)
    return keys, hashes


def _pinned(batch: pa.RecordBatch, hashes: np.ndarray) -> np.ndarray:
    """The hashes of the rows whose meta says PINNED (their group must stay in training)."""
    flag = pl.from_arrow(batch.column("meta")).str.json_path_match(f"$.{PINNED}").eq("true").fill_null(False)
    return hashes[flag.to_numpy()]


def _row_cutoffs(store: ArtifactStore, manifest: dict,
                 cfg: SplitConfig) -> tuple[dict[tuple[str, str], int], set[int]]:
    """eval_rows mode: per (source, task), the hash below which a group is held out, and the
    hashes of the pinned groups (never held out, not counted toward eval_rows)."""
    groups: dict[tuple[str, str], dict[int, int]] = defaultdict(lambda: defaultdict(int))
    pinned: set[int] = set()
    for batch in survivors(store, manifest, _KEY_COLUMNS):
        keys, hashes = group_hashes(cfg.seed, batch)
        pinned.update(_pinned(batch, hashes).tolist())
        for key, h in zip(keys, hashes.tolist()):
            groups[key][h] += 1  # rows per group (a group's rows share its hash)
    cutoffs = {}
    for key, sizes in groups.items():
        ordered = sorted(kv for kv in sizes.items() if kv[0] not in pinned)
        if not ordered:
            cutoffs[key] = 0
            continue
        taken, cutoff = 0, ordered[0][0]  # default: nothing held out
        # Leave at least the last group in training, so no task vanishes from the mixture.
        for h, n in ordered[:-1]:
            if taken + n > cfg.eval_rows:
                break
            taken += n
            cutoff = h + 1
        cutoffs[key] = cutoff
    return cutoffs, pinned


def _markdown(counts: dict[tuple[str, str], list[int]]) -> str:
    per_source: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for (source, _task), (train, ev) in counts.items():
        agg = per_source[source]
        agg[0] += train
        agg[1] += ev
        agg[2] += 1
    rows = [(source, n_tasks, train, ev) for source, (train, ev, n_tasks) in sorted(per_source.items())]
    return markdown.table(["source", "tasks", "train rows", "eval rows"], rows, "lrrr", title="Held-out split")


def split(root: str, recipe: dict, dedup_manifest: dict) -> dict:
    """Step `split`: the records dedup kept -> `records_train` + `records_eval` (+ an empty `rejects`)."""
    cfg = as_recipe(recipe).split
    store = ArtifactStore(root)

    def body(writer) -> None:
        cutoffs, pinned = _row_cutoffs(store, dedup_manifest, cfg) if cfg.eval_rows is not None else (None, set())
        by_fraction = fraction_cutoff(cfg)
        counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
        writer.table("records_train", RECORDS)
        writer.table("records_eval", RECORDS)
        writer.write("rejects", REJECTS, [])
        progress = Progress("split", total=dedup_manifest["stats"]["rows_out"])
        for batch in survivors(store, dedup_manifest):
            keys, hashes = group_hashes(cfg.seed, batch)
            if cutoffs is None:
                held = hashes < np.uint64(by_fraction) if by_fraction < _FULL else np.ones(len(keys), bool)
            else:
                held = np.fromiter((h < cutoffs[k] and h not in pinned for k, h in zip(keys, hashes.tolist())),
                                   bool, len(keys))
            mask = pa.array(held)
            writer.write("records_eval", RECORDS, batch.filter(mask))
            writer.write("records_train", RECORDS, batch.filter(pc.invert(mask)))
            for key, is_eval in zip(keys, held.tolist()):
                counts[key][int(is_eval)] += 1
            progress.add(batch.num_rows)
        progress.done()
        n_eval = sum(c[1] for c in counts.values())
        n_train = sum(c[0] for c in counts.values())
        writer.stats.update(
            rows_in=n_train + n_eval,
            rows_out=n_train + n_eval,
            rows_rejected=0,
            rows_train=n_train,
            rows_eval=n_eval,
            eval_by_source={s: sum(c[1] for (src, _), c in counts.items() if src == s)
                            for s in sorted({k[0] for k in counts})},
            report_markdown=_markdown(counts),
        )
        logger().info(f"split: {n_train} train rows, {n_eval} held-out rows")

    return run_step(
        store, STEP, VERSION, {"dedup": input_ref(dedup_manifest)}, cfg.model_dump(), "held-out", body
    )
