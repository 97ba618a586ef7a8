"""The `validate` step itself: the suite and decontamination over `records_train`, the
rejects, the report and the gate (see tasks/validate/__init__.py)."""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from tasks import decontam, markdown, sql
from tasks.config import Recipe, as_recipe
from tasks.errors import GateFailed
from tasks.langid import languages_later
from tasks.model_registry import is_named, resolve_model
from tasks.progress import table_rows
from tasks.schema import RAW_PREFIX_CHARS, RECORDS, REJECTS
from tasks.step import Progress, input_ref, logger, run_step
from tasks.store import ArtifactStore, content_hash, file_sha256
from tasks.validate.checks import unexpected_mask
from tasks.validate.expectations import GE, Outcome, ge_results
from tasks.validate.features import first_user_turns, row_features
from tasks.validate.suite import SAMPLE_IDS, Expectation, Suite, load_suite, parameters, skip_reason, suite_path

STEP, VERSION = "validate", 4  # 4: tool turns, tool-call checks, the `tools` column; 3: tasks.answers choice check, item words, held-out prompts without exemplars; 2: template n-grams, reasoned targets
EXAMPLES_PER_REASON = 3  # per source, task and reject reason in the report
CONTAMINATED = "contaminated"
def _tokenizer_path(recipe: Recipe) -> str | None:
    """The local tokenizer directory token bounds use: train.tokenizer, else train.model (a named
    model's converted directory, or a local path); None for the tiny model or a hub name."""
    for cand in (recipe.train.tokenizer, None if recipe.train.model == "tiny" else recipe.train.model):
        if cand and (is_named(cand) or Path(recipe.resolve(cand)).exists()):
            return resolve_model(cand, recipe.resolve)
    return None


def _load_tokenizer(path: str | None):
    if path is None:
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def _benchmark_hashes(recipe: Recipe) -> dict:
    return {
        b.name: [file_sha256(f) for f in decontam.benchmark_files(recipe, b)]
        for b in recipe.validate_cfg.decontamination.benchmarks
    }


def validate(root: str, recipe: dict, split_manifest: dict) -> dict:
    """Run the suite and decontamination over `records_train`; see the module docstring."""
    recipe = as_recipe(recipe)
    cfg = recipe.validate_cfg
    suite = load_suite(suite_path(recipe))  # before any data is read
    decontam.check_benchmarks(recipe)
    store = ArtifactStore(root)
    tok_path = _tokenizer_path(recipe)
    config = {
        "validate": cfg.model_dump(),
        "suite_sha256": suite.sha256,
        "benchmarks": _benchmark_hashes(recipe),
        "tokenizer": tok_path,
        "tokenizer_files": content_hash(sorted(p.name for p in Path(tok_path).iterdir())) if tok_path and Path(tok_path).is_dir() else None,
    }
    return run_step(
        store, STEP, VERSION, input_ref(split_manifest), config, "expectations",
        lambda w: _body(w, store, recipe, suite, split_manifest, tok_path),
    )


def _body(writer, store: ArtifactStore, recipe: Recipe, suite: Suite, split_manifest: dict, tok_path) -> None:
    cfg = recipe.validate_cfg
    params = parameters(cfg)
    tokenizer = _load_tokenizer(tok_path)
    outcomes = {e.name: Outcome(e, skipped=skip_reason(e, params, tokenizer is not None)) for e in suite.expectations}
    active = {n for n, o in outcomes.items() if o.skipped is None}
    ge = GE(suite, params, skipped=set(outcomes) - active)
    failures: list[str] = []
    ge_json: dict[str, Any] = {"suite": suite.name, "file": suite.file, "row": [], "table": None, "source": None}
    if not suite.expectations:
        failures.append(f"suite {suite.file} has no expectations")

    files = store.paths(split_manifest, "records_train")
    _table_checks(files, suite, outcomes, active, failures)

    dcfg = cfg.decontamination
    prompts = decontam.eval_prompts(
        recipe, decontam.heldout_prompts(store.iter_batches(split_manifest, "records_eval"))
        if dcfg.heldout and store.paths(split_manifest, "records_eval") else None,
    ) if dcfg.enabled else decontam.PROMPTS.empty_table()
    matcher = decontam.Decontaminator(prompts, dcfg)
    row_exps = [e for e in suite.at("row") if e.name in active]
    per_source: dict[str, dict[str, int]] = {}
    per_bench: dict[str, int] = {}
    breakdown = Breakdown()
    rows_in = rows_out = rejected = 0
    ge_rows_left = cfg.ge_sample_rows
    sample_frames = []
    progress = Progress("validate", total=table_rows(split_manifest, "records_train"))
    for batch in store.iter_batches(split_manifest, "records_train", batch_size=cfg.batch_rows):
        df = pl.from_arrow(pa.Table.from_batches([batch]))
        # Language ID runs on the worker pool and decontamination on a thread while this process
        # computes the row features (`lang` joins them after); matches on rejected rows are dropped below.
        user = first_user_turns(df)
        lang = languages_later(user, cfg.lang_min_chars, cfg.lang_max_chars) if cfg.lang_max_chars else None
        matches = matcher.match_later(decontam.user_turns(df))
        feats = row_features(df, cfg, user, None, tokenizer)
        if lang:
            feats = feats.with_columns(pl.Series("lang", lang(), dtype=pl.String))
        masks = {e.name: unexpected_mask(e, feats, params) for e in row_exps}
        if ge_rows_left is None or ge_rows_left > 0:
            result = ge.validate("row", feats.drop("_user").to_pandas())
            ge_json["row"].append(result)
            for name, r in ge_results(result):
                outcomes[name].add_ge(r)
                outcomes[name].ge_sample_mask_unexpected += int(masks[name].sum())
            sample_frames.append(batch.slice(0, min(batch.num_rows, 2_000)))
            if ge_rows_left is not None:
                ge_rows_left -= batch.num_rows
        breakdown.add_rows(df)
        kept, keep = _reject_rows(writer, df, feats, row_exps, masks, outcomes, breakdown)
        clean = _remove_contaminated(writer, kept, _on_kept(matches(), keep), per_bench, breakdown)
        if clean.height:
            writer.write("records_valid", RECORDS, clean.to_arrow())
        _count(per_source, df, kept, clean)
        rows_in += df.height
        rows_out += clean.height
        rejected += df.height - clean.height
        progress.add(df.height)
    progress.done()
    matcher.close()
    writer.write("records_valid", RECORDS, RECORDS.empty_table())  # the table exists even when empty
    writer.write("rejects", REJECTS, REJECTS.empty_table())
    if rows_in == 0:
        failures.append("records_train has no rows")

    if sample_frames:  # table-level expectations through great-expectations, on the sample
        ge_json["table"] = ge.validate("table", pa.Table.from_batches(sample_frames).to_pandas())
        for name, r in ge_results(ge_json["table"]):
            outcomes[name].add_ge(r)
    source_frame = _source_frame(per_source)
    ge_json["source"] = ge.validate("source", source_frame.to_pandas())
    for name, r in ge_results(ge_json["source"]):
        outcomes[name].add_ge(r)
    for e in suite.at("source"):
        if e.name in active:
            bad = unexpected_mask(e, source_frame, params)
            outcomes[e.name].unexpected = int(bad.sum())
            outcomes[e.name].sample_ids = source_frame.filter(bad)["source"].to_list()[:SAMPLE_IDS]

    failures += _gate_failures(outcomes)
    if not any(o.ge_evaluated for o in outcomes.values()):
        failures.append(f"suite {suite.file}: no expectation was evaluated")
    writer.attach_file("ge_validation.json", json.dumps(ge_json, indent=1, default=str).encode())
    report = _report(suite, outcomes, source_frame, per_bench, matcher, failures) + "\n" + breakdown.markdown()
    writer.attach_file("validation.md", report.encode())
    writer.stats.update(
        rows_in=rows_in, rows_out=rows_out, rows_rejected=rejected,
        rows_contaminated=sum(per_bench.values()), contaminated_by_benchmark=per_bench,
        eval_prompts=matcher.n_prompts, boilerplate_ngrams=matcher.n_boilerplate, per_source=source_frame.to_dicts(),
        expectations={n: _outcome_stats(o) for n, o in outcomes.items()},
        gate_passed=not failures, gate_failures=failures, report_markdown=report,
    )
    log = logger()
    log.info(f"validate: {rows_in} in, {rows_out} valid, {rejected} rejected "
             f"({sum(per_bench.values())} contaminated); gate {'passed' if not failures else 'FAILED'}")
    for f in failures:
        log.warning(f"validate gate: {f}")


def _table_checks(files: list[Path], suite: Suite, outcomes: dict, active: set, failures: list) -> None:
    """Dataset-level checks over every row: Arrow schema of each part, DuckDB for the rest."""
    import duckdb

    con = duckdb.connect()
    src = f"read_parquet({sql.path_list(files)})" if files else None
    for e in suite.at("table"):
        if e.name not in active:
            continue
        o = outcomes[e.name]
        if e.type == "expect_table_columns_to_match_set":
            want = list(e.kwargs.get("column_set") or [])
            for f in files:
                schema = pq.read_schema(f)
                missing = [c for c in want if c not in schema.names]
                extra = [c for c in schema.names if c not in want] if e.kwargs.get("exact_match", True) else []
                wrong = [f"{c}: {schema.field(c).type} (expected {RECORDS.field(c).type})"
                         for c in want if c in schema.names and c in RECORDS.names
                         and not schema.field(c).type.equals(RECORDS.field(c).type)]
                if missing or extra or wrong:
                    o.unexpected += 1
                    o.failed_detail = f"{f}: missing {missing} extra {extra} wrong types {wrong}"
        elif src is None:
            continue
        elif e.type == "expect_column_values_to_be_unique":
            col = '"' + e.column + '"'
            rows = con.sql(f"SELECT {col} FROM {src} WHERE {col} IS NOT NULL GROUP BY 1 HAVING count(*) > 1").fetchall()
            n = con.sql(f"SELECT count(*) FROM {src} WHERE {col} IN (SELECT {col} FROM {src} GROUP BY 1 HAVING count(*) > 1)").fetchall()[0][0]
            o.unexpected, o.sample_ids = n, [str(r[0]) for r in rows[:SAMPLE_IDS]]
        elif e.type == "expect_column_values_to_not_be_null":
            o.unexpected = con.sql(f'SELECT count(*) FROM {src} WHERE "{e.column}" IS NULL').fetchall()[0][0]
        elif e.type == "expect_table_row_count_to_be_between":
            n = con.sql(f"SELECT count(*) FROM {src}").fetchall()[0][0]
            lo, hi = e.kwargs.get("min_value"), e.kwargs.get("max_value")
            o.unexpected = int((lo is not None and n < lo) or (hi is not None and n > hi))
            o.failed_detail = f"row count {n}"
    con.close()


def _reject_rows(writer, df: pl.DataFrame, feats: pl.DataFrame, exps: list[Expectation],
                 masks: dict[str, pl.Series], outcomes: dict, breakdown: Breakdown) -> tuple[pl.DataFrame, np.ndarray]:
    """Write rows failing any row-level expectation to rejects; return (the rest with `lang`
    set, a mask of the rows kept)."""
    if not exps:
        return df.with_columns(feats["lang"]), np.ones(df.height, bool)
    f = feats.with_columns([masks[e.name].alias(f"_m{i}") for i, e in enumerate(exps)])
    for i, e in enumerate(exps):
        o = outcomes[e.name]
        o.unexpected += int(f[f"_m{i}"].sum())
        if len(o.sample_ids) < SAMPLE_IDS:
            o.sample_ids += f.filter(pl.col(f"_m{i}"))["record_id"].head(SAMPLE_IDS - len(o.sample_ids)).to_list()
    reason = pl.lit(None, dtype=pl.String)
    for i, e in reversed(list(enumerate(exps))):  # the first failed expectation in suite order wins
        reason = pl.when(pl.col(f"_m{i}")).then(pl.lit(e.name)).otherwise(reason)
    detail = pl.concat_str(
        [pl.when(pl.col(f"_m{i}")).then(pl.lit(f"{e.name}: {e.column}=") + pl.col(e.column).cast(pl.String).fill_null("null"))
         for i, e in enumerate(exps)],
        separator="; ", ignore_nulls=True,
    )
    f = f.with_columns(reason.alias("_reason"), detail.str.slice(0, 500).alias("_detail"))
    bad = f["_reason"].is_not_null()
    if bad.any():
        both = pl.concat([df.select("source", "task", "origin_file", "origin_row", "record_id"),
                          f.select("_reason", "_detail", "_user")], how="horizontal").filter(bad)
        _write_rejects(writer, breakdown, both.select(
            pl.lit(STEP).alias("step"), pl.col("_reason").alias("reason"), pl.col("_detail").alias("detail"),
            "source", "origin_file", "origin_row", "record_id", pl.lit(None, dtype=pl.String).alias("related_id"),
            pl.col("_user").str.slice(0, RAW_PREFIX_CHARS).alias("raw_prefix"), "task",
        ))
    return df.with_columns(feats["lang"]).filter(~bad), ~bad.to_numpy()


def _on_kept(matches: pa.Table, keep: np.ndarray) -> pa.Table:
    """Matches whose row was kept, `row_idx` renumbered from positions in the batch to
    positions among the kept rows."""
    rows = matches.column("row_idx").to_numpy()
    hit = keep[rows]
    new_idx = (np.cumsum(keep) - 1)[rows[hit]]
    column = matches.schema.get_field_index("row_idx")
    return matches.filter(pa.array(hit)).set_column(column, "row_idx", pa.array(new_idx, pa.int64()))


def _remove_contaminated(writer, kept: pl.DataFrame, matches: pa.Table, per_bench: dict,
                         breakdown: Breakdown) -> pl.DataFrame:
    """Write contaminated rows to rejects (benchmark name, matched eval item id); return the rest."""
    if matches.num_rows == 0:
        return kept
    m = pl.from_arrow(matches)
    k = kept.with_row_index("row_idx").with_columns(pl.col("row_idx").cast(pl.Int64))
    hit = k.join(m, on="row_idx", how="inner")
    for bench, n in hit.group_by("bench").len().iter_rows():
        per_bench[bench] = per_bench.get(bench, 0) + n
    _write_rejects(writer, breakdown, hit.select(
        pl.lit(STEP).alias("step"), pl.lit(CONTAMINATED).alias("reason"),
        pl.col("bench").alias("detail"),
        "source", "origin_file", "origin_row", "record_id", pl.col("item_id").alias("related_id"),
        pl.col("messages").list.eval(pl.element().struct.field("content")).list.first().str.slice(0, RAW_PREFIX_CHARS).alias("raw_prefix"),
        "task",
    ))
    return k.join(m, on="row_idx", how="anti").drop("row_idx")


def _write_rejects(writer, breakdown: Breakdown, rejects: pl.DataFrame) -> None:
    """Write rejects (the REJECTS columns, then `task`) and count them in the report's breakdown."""
    breakdown.add_rejects(rejects)
    writer.write("rejects", REJECTS, rejects.drop("task").to_arrow())


class Breakdown:
    """The report's per source and task view: rows in, rejects by reason, the first
    EXAMPLES_PER_REASON of each reason (record id, detail, start of the user turn)."""

    def __init__(self):
        self.rows_in: dict[tuple[str, str], int] = defaultdict(int)
        self.rejected: dict[tuple[str, str, str], int] = defaultdict(int)
        self.examples: dict[tuple[str, str, str], list[str]] = defaultdict(list)

    def add_rows(self, df: pl.DataFrame) -> None:
        for source, task, n in df.group_by("source", "task").len().iter_rows():
            self.rows_in[(source or "", task or "")] += n

    def add_rejects(self, rejects: pl.DataFrame) -> None:
        example = pl.concat_str([
            pl.format("`{}` {}", "record_id", pl.col("detail").fill_null("")),
            pl.format(" (eval item `{}`)", "related_id"),  # null, so left out, on non-contamination rejects
            pl.format(": {}", pl.col("raw_prefix").fill_null("").str.slice(0, 80)),
        ], ignore_nulls=True)
        groups = rejects.group_by("source", "task", "reason", maintain_order=True).agg(
            pl.len().alias("n"), example.head(EXAMPLES_PER_REASON).alias("examples"))
        for source, task, reason, n, examples in groups.iter_rows():
            key = (source or "", task or "", reason)
            self.rejected[key] += n
            self.examples[key] += examples[: EXAMPLES_PER_REASON - len(self.examples[key])]

    def markdown(self) -> str:
        rows = []
        for (source, task), n_in in sorted(self.rows_in.items()):
            reasons = sorted(((r, n) for (s, t, r), n in self.rejected.items() if (s, t) == (source, task)),
                             key=lambda x: -x[1])
            n_rej = sum(n for _, n in reasons)
            head = (source, task, n_in, n_in - n_rej, n_rej)
            if not reasons:
                rows.append((*head, None, None, None))
            for i, (reason, n) in enumerate(reasons):
                examples = "<br>".join(self.examples[(source, task, reason)])  # cells fold whitespace
                rows.append((*(head if i == 0 else [None] * 5), reason, n, examples))
        return markdown.table(["source", "task", "rows in", "kept", "rejected", "reason", "rows", "examples"], rows,
                              "llrrrlrl", title="Per source and task")


def _count(per_source: dict, df: pl.DataFrame, kept: pl.DataFrame, clean: pl.DataFrame) -> None:
    for name, frame in (("rows_in", df), ("kept", kept), ("rows_valid", clean)):
        for source, n in frame.group_by("source").len().iter_rows():
            s = per_source.setdefault(source, {"rows_in": 0, "kept": 0, "rows_valid": 0})
            s[name] += n


def _source_frame(per_source: dict) -> pl.DataFrame:
    rows = [
        {"source": s, "rows_in": c["rows_in"], "rows_rejected": c["rows_in"] - c["kept"],
         "rows_contaminated": c["kept"] - c["rows_valid"], "rows_valid": c["rows_valid"],
         "reject_share": (c["rows_in"] - c["kept"]) / c["rows_in"] if c["rows_in"] else 0.0}
        for s, c in sorted(per_source.items())
    ]
    schema = {"source": pl.String, "rows_in": pl.Int64, "rows_rejected": pl.Int64, "rows_contaminated": pl.Int64,
              "rows_valid": pl.Int64, "reject_share": pl.Float64}
    return pl.DataFrame(rows, schema=schema)


def _gate_failures(outcomes: dict[str, Outcome]) -> list[str]:
    out = []
    for name, o in outcomes.items():
        if o.skipped:
            continue
        for err in o.errors:
            out.append(f"{name}: great-expectations raised: {err}")
        if o.e.level == "row":
            if o.ge_evaluated and o.ge_unexpected != o.ge_sample_mask_unexpected:
                out.append(f"{name}: great-expectations counted {o.ge_unexpected} unexpected rows on the sample, "
                           f"the vectorised check {o.ge_sample_mask_unexpected}")
        elif o.unexpected or not o.ge_success:
            ids = f" (e.g. {', '.join(map(str, o.sample_ids))})" if o.sample_ids else ""
            what = o.failed_detail or f"{o.unexpected} unexpected{ids}"
            out.append(f"{name} ({o.e.level}-level) failed: {what}")
    return out


def _outcome_stats(o: Outcome) -> dict:
    return {"level": o.e.level, "type": o.e.type, "skipped": o.skipped, "unexpected": o.unexpected,
            "ge_unexpected_sample": o.ge_unexpected, "errors": o.errors, "sample_ids": o.sample_ids}


def _report(suite: Suite, outcomes: dict, source_frame: pl.DataFrame, per_bench: dict, matcher, failures) -> str:
    lines = [f"## Validation: gate {'passed' if not failures else '**FAILED**'}", "",
             f"Suite `{suite.file}` ({len(suite.expectations)} expectations).", ""]
    if failures:
        lines += ["### Gate failures", ""] + [f"- {f}" for f in failures] + [""]
    rows = []
    for name, o in outcomes.items():
        if o.skipped:
            result = f"skipped ({o.skipped})"
        elif o.errors:
            result = "error"
        elif o.e.level == "row":
            result = "pass" if not o.unexpected else "rows rejected"
        else:
            result = "pass" if not o.unexpected and o.ge_success else "FAIL"
        ids = ", ".join(f"`{i}`" for i in o.sample_ids)
        rows.append((name, o.e.level, o.e.type, result, o.unexpected, o.ge_unexpected, ids))
    lines.append(markdown.table(["expectation", "level", "type", "result", "unexpected", "GE sample unexpected",
                                 "sample ids"], rows))
    lines.append(markdown.table(["source", "in", "rejected", "contaminated", "valid", "reject share"],
                                [(r["source"], r["rows_in"], r["rows_rejected"], r["rows_contaminated"],
                                  r["rows_valid"], f"{r['reject_share']:.1%}")
                                 for r in source_frame.iter_rows(named=True)], title="Per source"))
    lines += [f"### Decontamination ({matcher.n_prompts} eval prompts, {matcher.n}-grams; "
                  f"{matcher.n_boilerplate} template n-grams shared by many eval items not matched)", ""]
    lines += [f"- {b}: {n} rows removed" for b, n in sorted(per_bench.items())] or ["- no contaminated rows"]
    return "\n".join(lines) + "\n"


def gate(validate_manifest: dict) -> None:
    """Raise GateFailed with the failures when the validate step's gate did not pass."""
    stats = validate_manifest.get("stats", {})
    if "gate_passed" not in stats:
        raise GateFailed(f"validate manifest {validate_manifest.get('key')}: no gate result (stats.gate_passed)")
    if not stats["gate_passed"]:
        fails = stats.get("gate_failures") or ["(no reason recorded)"]
        raise GateFailed("quality gate failed; mix, train and evaluate will not run:\n" + "\n".join(f"- {f}" for f in fails))
