"""The `mix` step: the recipe's `stages` become one materialised training manifest per stage.

Input: `records_valid` (validated training rows; the held-out split is not in it, and
this step refuses to run if any `records_eval` row is). Output tables:

- `mixture`: stage, position (training order within the stage, 0-based), record_id,
  source, task, repeat (0 for a row's first use, k for its k-th repeat), n_tokens,
  replay_from (the earlier stage a replayed row comes from, else null).
- `mixture_report`: per stage and component (a source, or `replay:<stage>`): rows, tokens,
  target_share, achieved_share, repeat_factor, and the tolerance the expectation checks.
- `mixture_unselected`: every validated row a stage could draw from but did not pick, with
  the reason (`cap_per_task`: its task has more rows than the cap; `downsampled`: the
  stage's `total` is below what its source has; `share_met`: its source's share was filled
  without it), and every validated row no stage draws from (`not_in_any_stage`).

How a stage is planned (all stages are planned, and the report checked against
`expectations/mixture.json`, before anything is written):

1. **Pool**: rows of the stage's sources (and `tasks`, if given). A task's *size* is its
   rows (unit `examples`) or tokens (unit `tokens`); `cap_per_task` caps the rows a task
   counts with (FLAN-style), its tokens scale with it.
2. **Shares** per source: `target` takes `shares` (which with `replay.share` sum to 1);
   `proportional` uses weight x capped size; `temperature` weight x capped size^(1/T).
   Replay takes `replay.share`; the sources share the rest.
3. **Total**: `total` (rows or tokens), or None = the largest mixture that repeats
   nothing: with `proportional` and no weights that is every (capped) row exactly once.
4. **Quotas**: in examples, one largest-remainder rounding over all components, so every
   component is within 1 row of total x share. A source's quota is split over its tasks
   by capped size. In tokens, quotas are real numbers and rows are added in seeded order
   while a row's midpoint stays below the quota, carrying the error from task to task:
   a source lands within about half its longest row of its token target (tests assert
   <= one longest row).
5. **Selection** per task: a seeded permutation of its rows (sorted by record_id first, so
   input order does not matter). Downsampling takes a prefix (without replacement);
   upsampling takes whole passes (repeat 0, 1, ...) plus a seeded prefix as the remainder.
   With `upsample: false` a quota above the data is an error.
6. **Replay** of an earlier stage: `disjoint: true` draws rows of the earlier stage's pool
   that its manifest did not use, then (if not enough) rows it did use; `disjoint: false`
   draws from the earlier stage's manifest only.
7. **Order**: each component's rows are shuffled within repeat passes ("epochs"), then all
   components are interleaved by a jittered stride (row i of n gets key (i + u)/n, u
   seeded uniform), so sources are spread evenly through the stage, not concatenated.

Same seed -> byte-identical Parquet; another `seed` keeps per-source counts (examples) and
changes which rows are picked and their order.
"""
from __future__ import annotations

import json
import math
from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash

from tasks import markdown
from tasks.config import Recipe, StageConfig, as_recipe
from tasks.errors import GateFailed, RecipeError, TunelineError
from tasks.step import Progress, input_ref, logger, run_step
from tasks.store import ArtifactStore
from tasks.tokens.chat import count_tokens
from tasks.tokens.count import count_columns as token_count_columns
from tasks.tokens.tokenizer import load_tokenizer, tokenizer_dir
from tasks.validate.expectations import validate_frame

STEP = "mix"
VERSION = 2  # 2: mixture_unselected
SUITE = Path(__file__).resolve().parents[1] / "expectations" / "mixture.json"
_EPS = 1e-9

MIXTURE = pa.schema(
    [
        ("stage", pa.string()),
        ("position", pa.int64()),
        ("record_id", pa.string()),
        ("source", pa.string()),
        ("task", pa.string()),
        ("repeat", pa.int32()),
        ("n_tokens", pa.int64()),
        ("replay_from", pa.string()),
    ]
)

MIXTURE_REPORT = pa.schema(
    [
        ("stage", pa.string()),
        ("stage_index", pa.int32()),
        ("source", pa.string()),  # a source name, or `replay:<earlier stage>`
        ("unit", pa.string()),
        ("rows", pa.int64()),
        ("tokens", pa.int64()),
        ("distinct_rows", pa.int64()),
        ("available_rows", pa.int64()),
        ("target_share", pa.float64()),
        ("achieved_share", pa.float64()),
        ("share_error", pa.float64()),
        ("share_tolerance", pa.float64()),
        ("allowed_error", pa.float64()),  # share_tolerance, + one row's share in unit `examples`
        ("repeat_factor", pa.float64()),  # selected / available (uncapped), in the stage's unit: <1 = downsampled
        ("max_repeat", pa.int32()),
    ]
)

MIXTURE_UNSELECTED = pa.schema(
    [
        ("stage", pa.string()),  # null: no stage draws from the row's source and task
        ("stage_index", pa.int32()),
        ("record_id", pa.string()),
        ("source", pa.string()),
        ("task", pa.string()),
        ("reason", pa.string()),  # cap_per_task, downsampled, share_met, not_in_any_stage
        ("detail", pa.string()),
    ]
)

#: The columns of `records_valid` the pool keeps (with the token counts).
POOL_COLUMNS = ("record_id", "source", "task")
TokenCounter = Callable[[list[list[dict]], list[str | None]], list[int]]  # (messages, tools) of a batch


# --------------------------------------------------------------------------- recipe checks
def stage_sources(stage: StageConfig, recipe: Recipe) -> list[str]:
    """The sources a stage draws from: `sources`, else the keys of `shares`/`weights`, else all."""
    if stage.sources is not None:
        return list(stage.sources)
    named = stage.shares or stage.weights
    return list(named) if named else [s.name for s in recipe.sources]


def check_stages(recipe: Recipe | dict, file: str = "<recipe>") -> None:
    """Reject impossible stage specs before any data is read (called from config.check_recipe)."""
    if isinstance(recipe, dict):
        recipe = as_recipe(recipe)
    known = [s.name for s in recipe.sources]
    seen: list[str] = []
    for stage in recipe.stages:
        where = f"{file}: stage {stage.name!r}"
        names = stage_sources(stage, recipe)
        if not names:
            raise RecipeError(f"{where}: no sources")
        for name in names:
            if name not in known:
                raise RecipeError(f"{where}: unknown source {name!r}; recipe sources are {known}")
        if len(set(names)) != len(names):
            raise RecipeError(f"{where}: a source is listed twice in `sources`: {names}")
        if stage.tasks is not None and not stage.tasks:
            raise RecipeError(f"{where}: `tasks` is an empty list; leave it out to keep every task")
        _check_weights(stage, names, where)
        if stage.replay is not None:
            prior = stage.replay.from_
            if prior == stage.name:
                raise RecipeError(f"{where}: replay.from names the stage itself; it must be an earlier stage")
            if prior not in seen:
                later = [s.name for s in recipe.stages]
                what = "is a later stage" if prior in later else "does not exist"
                raise RecipeError(f"{where}: replay.from {prior!r} {what}; earlier stages are {seen}")
        seen.append(stage.name)


def _check_weights(stage: StageConfig, names: list[str], where: str) -> None:
    replay = stage.replay.share if stage.replay else 0.0
    if stage.strategy == "target":
        if stage.shares is None:
            raise RecipeError(f"{where}: strategy target needs `shares` (source -> share)")
        if stage.weights is not None:
            raise RecipeError(f"{where}: `weights` apply to proportional/temperature; target uses `shares`")
        if set(stage.shares) != set(names):
            raise RecipeError(
                f"{where}: `shares` must name exactly the stage's sources {sorted(names)}; got {sorted(stage.shares)}"
            )
        bad = {k: v for k, v in stage.shares.items() if not 0 < v <= 1}
        if bad:
            raise RecipeError(f"{where}: shares must be in (0, 1]; got {bad}")
        total = sum(stage.shares.values()) + replay
        if abs(total - 1) > 1e-6:
            extra = f" + replay.share {replay}" if replay else ""
            raise RecipeError(f"{where}: shares{extra} sum to {total:.6g}, expected 1")
        return
    if stage.shares is not None:
        raise RecipeError(f"{where}: `shares` need strategy: target (strategy is {stage.strategy})")
    if stage.weights is not None:
        unknown = sorted(set(stage.weights) - set(names))
        if unknown:
            raise RecipeError(f"{where}: weights name sources not in the stage: {unknown}; stage sources {names}")
        bad = {k: v for k, v in stage.weights.items() if not v > 0}
        if bad:
            raise RecipeError(f"{where}: weights must be > 0; got {bad}")


# --------------------------------------------------------------------------- the pool
@dataclass
class Pool:
    """Every validated row's key columns, sorted by record_id (so input order never matters)."""

    record_id: pa.Array
    source: np.ndarray  # object arrays: small per-row keys
    task: np.ndarray
    n_tokens: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.record_id)

    @cached_property
    def codes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(source names, source code per row, task names, task code per row), for vectorised grouping."""
        return (*_factorize(self.source), *_factorize(self.task))

    def rows_of(self, column: str, names: list[str]) -> np.ndarray:
        """Boolean mask of rows whose source (or task) is one of `names`."""
        src_names, src_codes, task_names, task_codes = self.codes
        values, codes = (src_names, src_codes) if column == "source" else (task_names, task_codes)
        return np.isin(codes, np.flatnonzero(np.isin(values, np.array(names, dtype=str))))


def _factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct names, code per row): Arrow's hash encoding, much faster than np.unique on strings."""
    enc = pa.array(values, pa.string()).dictionary_encode()
    names = np.asarray(enc.dictionary.to_pylist(), dtype=str)
    rank = np.argsort(np.argsort(names, kind="stable"))  # code -> position in sorted order
    return np.sort(names), rank[enc.indices.to_numpy()]


def count_pool_tokens(store: ArtifactStore, validate_manifest: dict, root: str, tokenizer_manifest: dict,
                      reasoning: str = "keep", executor: Executor | None = None) -> tuple[Pool | None, TokenCounter | None, str]:
    """Tokens per conversation with the pipeline's tokenizer and chat format: (the pool, None, how)
    from the parallel counter (tasks.tokens.count: row groups on local threads, or on
    `executor`, e.g. a Dask cluster's, each returning its rows' keys and counts), or
    (None, a per-batch counter for `load_pool`, why not)."""
    tokenizer = load_tokenizer(root, tokenizer_manifest)
    paths = store.paths(validate_manifest, "records_valid")
    progress: list[Progress] = []  # started by the first row group counted

    def counted(rows: int) -> None:
        if not progress:
            progress.append(Progress("mix: counting tokens", total=sum(pq.ParquetFile(p).metadata.num_rows
                                                                       for p in paths)))
        progress[0].add(rows)

    table, how = token_count_columns(paths, tokenizer_dir(root, tokenizer_manifest) / "tokenizer.json",
                                     tokenizer.chat_template, reasoning=reasoning, executor=executor,
                                     columns=POOL_COLUMNS, progress=counted)
    for p in progress:
        p.done()
    if table is not None:
        return pool_of(table.column("record_id"), table.column("source"), table.column("task"),
                       table.column("n_tokens").to_numpy()), None, how
    return (None, lambda batch, tools: count_tokens(tokenizer, batch, tools=tools, reasoning=reasoning),
            f"the tokenizer, in-process ({how})")


def load_pool(store: ArtifactStore, validate_manifest: dict, count: TokenCounter) -> Pool:
    """Read `records_valid` batch by batch, keeping only the key columns and `count` of each
    batch's messages."""
    ids, sources, tasks, tokens = [], [], [], []
    total = sum(part["rows"] for part in validate_manifest.get("tables", {}).get("records_valid", []))
    progress = Progress("mix: counting tokens", total=total)
    for batch in store.iter_batches(validate_manifest, "records_valid", columns=[*POOL_COLUMNS, "messages", "tools"],
                                    batch_size=8192):
        ids.append(batch.column("record_id"))
        sources.append(batch.column("source"))
        tasks.append(batch.column("task"))
        tokens.extend(count(batch.column("messages").to_pylist(), batch.column("tools").to_pylist()))
        progress.add(batch.num_rows)
    progress.done()
    return pool_of(pa.chunked_array(ids, pa.string()), pa.chunked_array(sources, pa.string()),
                   pa.chunked_array(tasks, pa.string()), np.asarray(tokens, dtype=np.int64))


def pool_of(record_id: pa.ChunkedArray, source: pa.ChunkedArray, task: pa.ChunkedArray, n_tokens: np.ndarray) -> Pool:
    """The pool of these rows (any order; a null task is ""), sorted by record_id."""
    if len(n_tokens) != len(record_id):
        raise TunelineError(f"mix: {len(n_tokens):,} token counts for {len(record_id):,} rows of records_valid")
    record_ids = record_id.combine_chunks()
    order = pc.sort_indices(record_ids).to_numpy()
    return Pool(
        record_id=record_ids.take(pa.array(order)),
        source=source.combine_chunks().to_numpy(zero_copy_only=False)[order].astype(object),
        task=task.combine_chunks().fill_null("").to_numpy(zero_copy_only=False)[order].astype(object),
        n_tokens=np.asarray(n_tokens, dtype=np.int64)[order],
    )


def assert_no_heldout(store: ArtifactStore, split_manifest: dict, pool: Pool) -> None:
    """Refuse to mix if any held-out (`records_eval`) row reached the training pool."""
    eval_ids = store.read(split_manifest, "records_eval", columns=["record_id"])
    if eval_ids is None or eval_ids.num_rows == 0 or len(pool) == 0:
        return
    leaked = pc.is_in(pool.record_id, value_set=eval_ids.column("record_id").combine_chunks())
    n = pc.sum(leaked).as_py() or 0
    if n:
        first = pool.record_id.filter(leaked)[:3].to_pylist()
        raise TunelineError(
            f"mix: {n} held-out rows (split table records_eval) are in records_valid, e.g. record_id {first}; "
            f"the validate step must take its input from split's records_train"
        )


# --------------------------------------------------------------------------- planning
def _rng(seed: int, *names: str) -> np.random.Generator:
    """A local RNG per (seed, stage, component, purpose): one choice never shifts another."""
    return np.random.default_rng([seed, *(xxhash.xxh32_intdigest(n.encode("utf-8")) for n in names)])


def distinct(idx: np.ndarray, size: int) -> np.ndarray:
    """Sorted distinct values of an index array into [0, size) (a mask: faster than np.unique here)."""
    mask = np.zeros(size, bool)
    mask[idx] = True
    return np.flatnonzero(mask)


def round_quotas(values: dict[str, float], total: int) -> dict[str, int]:
    """Largest-remainder rounding: integers summing to `total`, each within 1 of its value."""
    floors = {k: math.floor(v + _EPS) for k, v in values.items()}
    left = total - sum(floors.values())
    by_rest = sorted(values, key=lambda k: (-(values[k] - floors[k]), k))
    for k in by_rest[: max(left, 0)]:
        floors[k] += 1
    return floors


@dataclass
class Component:
    """One source (or the replay) of a stage: its selected pool rows and repeat indices."""

    name: str
    target: float
    available_rows: int
    available_units: float
    idx: list[np.ndarray] = field(default_factory=list)
    rep: list[np.ndarray] = field(default_factory=list)
    replay_from: str | None = None

    def rows(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.idx:
            return np.zeros(0, np.int64), np.zeros(0, np.int32)
        return np.concatenate(self.idx), np.concatenate(self.rep).astype(np.int32)


@dataclass
class StagePlan:
    stage: StageConfig
    index: int
    eligible: np.ndarray  # pool indices the stage draws its own rows from
    components: list[Component]
    order_idx: np.ndarray = None  # pool indices in training order
    order_rep: np.ndarray = None
    order_comp: np.ndarray = None  # component index per position

    def used(self, pool_size: int) -> np.ndarray:
        """Distinct pool indices the stage's manifest uses, ascending."""
        return distinct(self.order_idx, pool_size)


def select(order: np.ndarray, quota: float, units: np.ndarray | None, upsample: bool, where: str
           ) -> tuple[np.ndarray, np.ndarray, float]:
    """Pick rows from `order` (preference order) to fill `quota`: whole passes, then a prefix.

    `units` is None for unit examples (quota is a row count), else the rows' token counts.
    Returns (pool indices, repeat indices, units achieved).
    """
    n = len(order)
    if quota <= _EPS:
        return order[:0], np.zeros(0, np.int32), 0.0
    if n == 0:
        raise RecipeError(f"{where}: no rows to draw {quota:g} from")
    if units is None:
        k = int(round(quota))
        passes, rest = divmod(k, n)
    else:
        sizes = units[order]
        total = float(sizes.sum())
        passes = int(quota // total) if total > 0 else 0
        remainder = quota - passes * total
        cum = np.cumsum(sizes)
        # Keep a row while its midpoint stays below the quota: error <= half the row.
        rest = int(np.searchsorted(cum - sizes / 2, remainder - _EPS, side="left"))
    if not upsample and (passes > 1 or (passes == 1 and rest > 0)):
        need = f"{quota:g} {'rows' if units is None else 'tokens'}"
        have = n if units is None else int(units[order].sum())
        raise RecipeError(f"{where}: needs {need} but has {have}; set upsample: true or lower `total`")
    idx = np.concatenate([order] * passes + [order[:rest]])
    rep = np.concatenate([np.full(n, p, np.int32) for p in range(passes)] + [np.full(rest, passes, np.int32)])
    got = float(len(idx)) if units is None else float(units[idx].sum())
    return idx, rep, got


class Planner:
    """Plans every stage in order; later stages can replay earlier plans."""

    def __init__(self, recipe: Recipe, pool: Pool):
        self.recipe, self.pool = recipe, pool
        self.plans: dict[str, StagePlan] = {}
        self.warnings: list[str] = []

    def plan_all(self) -> list[StagePlan]:
        for i, stage in enumerate(self.recipe.stages):
            self.plans[stage.name] = self.plan(i, stage)
        return list(self.plans.values())

    # -- per stage ----------------------------------------------------------------
    def _tasks(self, stage: StageConfig, eligible: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
        """source -> task -> pool indices (ascending, i.e. record_id order), for the stage's rows."""
        src_names, src_codes, task_names, task_codes = self.pool.codes
        key = src_codes[eligible].astype(np.int64) * len(task_names) + task_codes[eligible]
        order = np.argsort(key, kind="stable")  # stable: keeps record_id order within a task
        sorted_key = key[order]
        starts = np.flatnonzero(np.diff(sorted_key, prepend=-1))  # where a new (source, task) begins
        keys = sorted_key[starts]
        groups = np.split(eligible[order], starts[1:])
        out: dict[str, dict[str, np.ndarray]] = {s: {} for s in stage_sources(stage, self.recipe)}
        for k, rows in zip(keys.tolist(), groups):
            out[str(src_names[k // len(task_names)])][str(task_names[k % len(task_names)])] = rows
        return out

    def _eligible(self, stage: StageConfig) -> np.ndarray:
        names = stage_sources(stage, self.recipe)
        mask = self.pool.rows_of("source", names)
        if stage.tasks is not None:
            have = set(self.pool.task[mask].tolist())
            missing = sorted(set(stage.tasks) - have)
            if missing:
                raise RecipeError(f"stage {stage.name!r}: tasks {missing} have no rows in sources {names}")
            mask &= self.pool.rows_of("task", stage.tasks)
        return np.flatnonzero(mask)

    def _capped(self, stage: StageConfig, idx: np.ndarray) -> float:
        """A task's size in the stage's unit, counting at most `cap_per_task` rows."""
        n = len(idx)
        kept = min(n, stage.cap_per_task) if stage.cap_per_task else n
        if stage.unit == "examples":
            return float(kept)
        return float(self.pool.n_tokens[idx].sum()) * kept / n if n else 0.0

    def _shares(self, stage: StageConfig, sizes: dict[str, float]) -> dict[str, float]:
        """Source -> share of the whole stage (sums to 1 - replay.share)."""
        own = 1.0 - (stage.replay.share if stage.replay else 0.0)
        if stage.strategy == "target":
            return dict(stage.shares)
        w = stage.weights or {}
        if stage.strategy == "proportional":
            raw = {s: w.get(s, 1.0) * v for s, v in sizes.items()}
        else:
            raw = {s: w.get(s, 1.0) * v ** (1.0 / stage.temperature) for s, v in sizes.items()}
        norm = sum(raw.values())
        return {s: own * v / norm for s, v in raw.items()}

    def plan(self, index: int, stage: StageConfig) -> StagePlan:
        where = f"stage {stage.name!r}"
        eligible = self._eligible(stage)
        by_source = self._tasks(stage, eligible)
        empty = [s for s, ts in by_source.items() if not ts]
        hint = (f"rejected upstream? tuneline query \"select step, reason, count(*) from rejects "
                f"where source = '{empty[0]}' group by all\"" if empty else "")
        if empty and (stage.strategy == "target" or len(empty) == len(by_source)):
            raise RecipeError(f"{where}: sources {empty} have no rows in records_valid ({hint})")
        if empty:  # proportional/temperature: an empty source's natural share is 0; say so, go on
            self.warnings.append(f"{where}: sources {empty} have no rows in records_valid; share 0 ({hint})")
            logger().warning(self.warnings[-1])
        capped = {s: {t: self._capped(stage, ix) for t, ix in ts.items()} for s, ts in by_source.items()}
        sizes = {s: sum(c.values()) for s, c in capped.items()}
        shares = self._shares(stage, sizes)
        replay_share = stage.replay.share if stage.replay else 0.0

        if stage.total is not None:
            stage_total = float(stage.total)
        else:  # the largest stage in which no source repeats a row
            stage_total = min(sizes[s] / shares[s] for s in shares if shares[s] > 0)
        targets = dict(shares)
        replay_name = f"replay:{stage.replay.from_}" if stage.replay else None
        if replay_name:
            targets[replay_name] = replay_share
        quotas: dict[str, float] = {c: stage_total * t for c, t in targets.items()}
        if stage.unit == "examples":
            n_total = stage.total if stage.total is not None else math.floor(stage_total + 1e-6)
            quotas = {c: float(q) for c, q in round_quotas(quotas, n_total).items()}
            if stage.total is None:  # float noise must never turn "use once" into a repeat
                quotas = {c: min(q, sizes[c]) if c in sizes else q for c, q in quotas.items()}

        units = None if stage.unit == "examples" else self.pool.n_tokens
        components = []
        for s in sorted(by_source):
            every = np.concatenate([np.zeros(0, np.int64), *by_source[s].values()])
            full = float(len(every)) if units is None else float(units[every].sum())  # uncapped
            comp = Component(s, targets[s], len(every), full)
            self._fill_source(stage, comp, by_source[s], capped[s], quotas[s], units, where)
            components.append(comp)
        if replay_name:
            components.append(self._replay(stage, replay_name, quotas[replay_name], units, where))
        plan = StagePlan(stage, index, eligible, components)
        self._order(plan)
        return plan

    def _fill_source(self, stage, comp, tasks, capped, quota, units, where) -> None:
        total_capped = sum(capped.values())
        if stage.unit == "examples":
            per_task = round_quotas({t: quota * c / total_capped for t, c in capped.items()}, int(quota))
        else:
            per_task = {t: quota * c / total_capped for t, c in capped.items()}
        carry = 0.0  # token mode: the last task's over/undershoot moves to the next one
        for t, ix in tasks.items():
            order = ix[_rng(stage.seed, stage.name, comp.name, t, "pick").permutation(len(ix))]
            want = max(per_task[t] + carry, 0.0)
            if units is not None:  # the carry may shift a task's share, never force a repeat
                have = float(units[ix].sum())
                want = min(want, have) if per_task[t] <= have + _EPS else want
            idx, rep, got = select(order, want, units, stage.upsample, f"{where} source {comp.name!r} task {t!r}")
            carry = want - got if units is not None else 0.0
            comp.idx.append(idx)
            comp.rep.append(rep)

    def _replay(self, stage, name, quota, units, where) -> Component:
        prior = self.plans[stage.replay.from_]
        used = prior.used(len(self.pool))
        rng = _rng(stage.seed, stage.name, name, "pick")
        if stage.replay.disjoint:
            unused = np.setdiff1d(prior.eligible, used, assume_unique=True)
            order = np.concatenate([unused[rng.permutation(len(unused))], used[rng.permutation(len(used))]])
        else:
            order = used[rng.permutation(len(used))]
        available = float(len(order)) if units is None else float(units[order].sum())
        comp = Component(name, stage.replay.share, len(order), available, replay_from=prior.stage.name)
        idx, rep, _ = select(order, quota, units, stage.upsample, f"{where} replay from {prior.stage.name!r}")
        comp.idx.append(idx)
        comp.rep.append(rep)
        return comp

    def _order(self, plan: StagePlan) -> None:
        """Shuffle each component within its repeat passes, then interleave by jittered stride."""
        stage = plan.stage
        keys, idxs, reps, comps = [], [], [], []
        for ci, comp in enumerate(plan.components):
            idx, rep = comp.rows()
            rng = _rng(stage.seed, stage.name, comp.name, "order")
            # Epoch order: all of pass 0 before pass 1, shuffled within a pass.
            perm = np.lexsort((rng.random(len(idx)), rep))
            n = len(idx)
            keys.append((np.arange(n) + rng.random(n)) / max(n, 1))
            idxs.append(idx[perm])
            reps.append(rep[perm])
            comps.append(np.full(n, ci, np.int32))
        key = np.concatenate(keys) if keys else np.zeros(0)
        order = np.argsort(key, kind="stable")
        plan.order_idx = np.concatenate(idxs)[order]
        plan.order_rep = np.concatenate(reps)[order]
        plan.order_comp = np.concatenate(comps)[order]


# --------------------------------------------------------------------------- outputs
def mixture_table(pool: Pool, plan: StagePlan) -> pa.Table:
    """The stage's manifest rows in training order."""
    take = pa.array(plan.order_idx, pa.int64())
    n = len(plan.order_idx)
    replay_from = [c.replay_from for c in plan.components]
    return pa.table(
        {
            "stage": pa.array([plan.stage.name] * n, pa.string()),
            "position": pa.array(np.arange(n, dtype=np.int64)),
            "record_id": pool.record_id.take(take),
            "source": pa.array(pool.source[plan.order_idx].tolist(), pa.string()),
            "task": pa.array(pool.task[plan.order_idx].tolist(), pa.string()),
            "repeat": pa.array(plan.order_rep.astype(np.int32)),
            "n_tokens": pa.array(pool.n_tokens[plan.order_idx]),
            "replay_from": pa.array([replay_from[c] for c in plan.order_comp.tolist()], pa.string()),
        },
        schema=MIXTURE,
    )


def report_rows(pool: Pool, plan: StagePlan) -> list[dict]:
    """One `mixture_report` row per component of the stage."""
    stage = plan.stage
    parts = [c.rows() for c in plan.components]
    unit_of = (lambda ix: float(len(ix))) if stage.unit == "examples" else (lambda ix: float(pool.n_tokens[ix].sum()))
    stage_units = sum(unit_of(ix) for ix, _ in parts) or 1.0
    stage_rows = sum(len(ix) for ix, _ in parts) or 1
    rows = []
    for comp, (idx, rep) in zip(plan.components, parts):
        achieved = unit_of(idx) / stage_units
        allowed = stage.share_tolerance + (1.0 / stage_rows if stage.unit == "examples" else 0.0)
        rows.append(
            {
                "stage": stage.name,
                "stage_index": plan.index,
                "source": comp.name,
                "unit": stage.unit,
                "rows": len(idx),
                "tokens": int(pool.n_tokens[idx].sum()),
                "distinct_rows": len(distinct(idx, len(pool))),
                "available_rows": comp.available_rows,
                "target_share": comp.target,
                "achieved_share": achieved,
                "share_error": abs(achieved - comp.target),
                "share_tolerance": stage.share_tolerance,
                "allowed_error": allowed,
                "repeat_factor": unit_of(idx) / comp.available_units if comp.available_units else 0.0,
                "max_repeat": int(rep.max()) + 1 if len(rep) else 0,
            }
        )
    return rows


def _unselected_reason(stage: StageConfig, comp: Component, task: str, task_rows: int) -> tuple[str, str]:
    if stage.cap_per_task and task_rows > stage.cap_per_task:
        return "cap_per_task", f"task {task!r} has {task_rows:,} rows, cap_per_task {stage.cap_per_task:,}"
    if stage.total is not None:
        return "downsampled", (f"stage total {stage.total:,} {stage.unit}: source {comp.name!r} "
                               f"(share {comp.target:.3f}) draws from {comp.available_rows:,} rows")
    return "share_met", (f"source {comp.name!r} filled its share {comp.target:.3f} of the stage "
                         f"before using all {comp.available_rows:,} of its rows")


def unselected_table(pool: Pool, plan: StagePlan) -> pa.Table:
    """The rows the stage could draw from (its own sources and tasks) that its manifest does not use."""
    used = np.zeros(len(pool), bool)
    used[plan.order_idx] = True
    left = plan.eligible[~used[plan.eligible]]
    sources, tasks = pool.source[left], pool.task[left]
    task_rows = _group_sizes(pool, plan.eligible)
    comps = {c.name: c for c in plan.components}
    why = {key: _unselected_reason(plan.stage, comps[key[0]], key[1], n) for key, n in task_rows.items()}
    reasons = [why[(s, t)] for s, t in zip(sources.tolist(), tasks.tolist())]
    n = len(left)
    return pa.table({
        "stage": pa.array([plan.stage.name] * n, pa.string()),
        "stage_index": pa.array(np.full(n, plan.index, np.int32)),
        "record_id": pool.record_id.take(pa.array(left, pa.int64())),
        "source": pa.array(sources.tolist(), pa.string()),
        "task": pa.array(tasks.tolist(), pa.string()),
        "reason": pa.array([r for r, _ in reasons], pa.string()),
        "detail": pa.array([d for _, d in reasons], pa.string()),
    }, schema=MIXTURE_UNSELECTED)


def _group_sizes(pool: Pool, rows: np.ndarray) -> dict[tuple[str, str], int]:
    """(source, task) -> number of `rows` in it."""
    src_names, src_codes, task_names, task_codes = pool.codes
    key = src_codes[rows].astype(np.int64) * len(task_names) + task_codes[rows]
    keys, counts = np.unique(key, return_counts=True)
    return {(str(src_names[k // len(task_names)]), str(task_names[k % len(task_names)])): int(c)
            for k, c in zip(keys.tolist(), counts.tolist())}


def outside_stages_table(pool: Pool, plans: list[StagePlan]) -> pa.Table:
    """Validated rows that no stage draws from (their source or task is in no stage)."""
    drawn = np.zeros(len(pool), bool)
    for plan in plans:
        drawn[plan.eligible] = True
    left = np.flatnonzero(~drawn)
    n = len(left)
    return pa.table({
        "stage": pa.nulls(n, pa.string()),
        "stage_index": pa.nulls(n, pa.int32()),
        "record_id": pool.record_id.take(pa.array(left, pa.int64())),
        "source": pa.array(pool.source[left].tolist(), pa.string()),
        "task": pa.array(pool.task[left].tolist(), pa.string()),
        "reason": pa.array(["not_in_any_stage"] * n, pa.string()),
        "detail": pa.array(["no stage lists this source (and task)"] * n, pa.string()),
    }, schema=MIXTURE_UNSELECTED)


def report_markdown(rows: list[dict], warnings: list[str] = (), unselected: dict[str, int] | None = None) -> str:
    """The mixture report: per stage and source, rows, tokens, target vs achieved, repeats,
    and how many validated rows were not selected, by reason."""
    out = ["### Mixture: target vs achieved shares per stage", ""]
    out += [f"> warning: {w}" for w in warnings] + ([""] if warnings else [])
    if unselected:
        counts = ", ".join(f"{reason} {n:,}" for reason, n in sorted(unselected.items()))
        out += [f"Validated rows not selected, by reason: {counts} (table `mixture_unselected`: "
                "`tuneline query \"select stage, source, reason, count(*) from mixture_unselected group by all\"`)", ""]
    for stage in sorted({r["stage_index"]: r["stage"] for r in rows}.items()):
        part = [r for r in rows if r["stage"] == stage[1]]
        out += [
            f"**Stage {stage[0] + 1}: `{stage[1]}`** (unit: {part[0]['unit']}; "
            f"{sum(r['rows'] for r in part):,} rows, {sum(r['tokens'] for r in part):,} tokens)",
            "",
            markdown.table(["source", "rows", "tokens", "target share", "achieved share", "repeat factor",
                            "max repeat"],
                           [(r["source"], f"{r['rows']:,}", f"{r['tokens']:,}", f"{r['target_share']:.3f}",
                             f"{r['achieved_share']:.3f}", f"{r['repeat_factor']:.2f}", r["max_repeat"])
                            for r in part], "lrrrrrr"),
        ]
    return "\n".join(out)


def check_report(rows: list[dict], suite_path: Path = SUITE) -> None:
    """Run the great-expectations suite over the report; a failure names the stage and source."""
    import pandas as pd
    from great_expectations.core.expectation_suite import ExpectationSuite

    if not rows:
        return
    df = pd.DataFrame(rows)
    suite = ExpectationSuite(**json.loads(Path(suite_path).read_text()))
    result = validate_frame(suite, df, "mixture_report")
    if result.success:
        return
    problems = []
    for r in result.results:
        if r.success:
            continue
        bad = r.result.get("unexpected_index_list") or list(range(len(df)))
        for i in bad[:10]:
            row = df.iloc[int(i)]
            problems.append(
                f"stage {row['stage']!r} source {row['source']!r}: achieved share {row['achieved_share']:.4f} "
                f"vs target {row['target_share']:.4f} (allowed error {row['allowed_error']:.4f}, "
                f"{r.expectation_config.type})"
            )
    raise GateFailed(f"mix: mixture report fails {Path(suite_path).name}:\n  " + "\n  ".join(problems))


# --------------------------------------------------------------------------- the step
def mix(root: str, recipe: dict, validate_manifest: dict, split_manifest: dict, tokenizer_manifest: dict,
        *, count_tokens: TokenCounter | None = None, executor: Executor | None = None) -> dict:
    """Step `mix`: `records_valid` -> `mixture` (one manifest per stage) + `mixture_report`.

    `count_tokens` overrides the pipeline's tokenizer (tests); by default tokens are counted
    with the tokenizer of `tokenizer_manifest` (see `count_pool_tokens`), on `executor` when
    one is given (a Dask client's executor: the same artifacts, counted on its workers).
    """
    rcp = as_recipe(recipe)
    check_stages(rcp)
    store = ArtifactStore(root)
    inputs = {
        "validate": input_ref(validate_manifest),
        "split": input_ref(split_manifest),
        "tokenizer": input_ref(tokenizer_manifest) if tokenizer_manifest else None,
    }
    config = {
        "stages": [s.model_dump(by_alias=True) for s in rcp.stages],
        "sources": [s.name for s in rcp.sources],
        "reasoning": rcp.train.reasoning,  # token counts follow what training keeps of reasoning traces
    }

    def body(writer) -> None:
        if count_tokens is not None:
            pool, count, how = None, count_tokens, "the counter given"
        else:
            pool, count, how = count_pool_tokens(store, validate_manifest, root, tokenizer_manifest,
                                                 rcp.train.reasoning, executor)
        if pool is None:
            pool = load_pool(store, validate_manifest, count)
        logger().info(f"mix: tokens counted with {how}")
        assert_no_heldout(store, split_manifest, pool)
        planner = Planner(rcp, pool)
        plans = planner.plan_all()
        report = [r for p in plans for r in report_rows(pool, p)]
        check_report(report)  # before anything is written
        writer.table("mixture", MIXTURE)
        for plan in plans:
            writer.write("mixture", MIXTURE, mixture_table(pool, plan))
        writer.write("mixture_report", MIXTURE_REPORT, report)
        unselected = pa.concat_tables([unselected_table(pool, p) for p in plans] + [outside_stages_table(pool, plans)])
        writer.write("mixture_unselected", MIXTURE_UNSELECTED, unselected)
        counts = unselected.group_by("reason").aggregate([("reason", "count")])
        by_reason = dict(zip(counts["reason"].to_pylist(), counts["reason_count"].to_pylist()))
        rows_out = sum(len(p.order_idx) for p in plans)
        # rows in = rows out: a mixture row is a (record, stage, repeat) use, nothing is dropped here.
        writer.stats.update(
            rows_in=rows_out,
            rows_out=rows_out,
            rows_rejected=0,
            pool_rows=len(pool),
            token_counting=how,
            warnings=planner.warnings,
            stages={p.stage.name: len(p.order_idx) for p in plans},
            unselected=by_reason,
            report_markdown=report_markdown(report, planner.warnings, by_reason),
        )
        logger().info(f"mix: {len(plans)} stages, {rows_out} rows from a pool of {len(pool)}")

    return run_step(store, STEP, VERSION, inputs, config, "stages", body)
