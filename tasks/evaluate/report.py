"""The comparison of base and every stage, built by sql/reports/eval_comparison.sql over
the `eval` tables of evaluate manifests (and the mixture their mix manifest names)."""
from __future__ import annotations

import math
from pathlib import Path

import duckdb

from tasks.catalog import readonly
from tasks.store import ArtifactStore

SQL = Path(__file__).resolve().parents[2] / "sql" / "reports" / "eval_comparison.sql"
_KEYS = ("suite", "metric", "source")


REPORT_FILE = "eval_comparison.md"  # in the artifacts directory, rewritten by every evaluate step


def _files(paths) -> str:
    return "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "]"


def _mix_manifest(store: ArtifactStore, eval_manifests: list[dict]) -> dict | None:
    for m in eval_manifests:
        ref = m.get("inputs", {}).get("mix")
        if ref:
            found = store.load(ref["step"], ref["key"], verify=False)
            if found is not None:
                return found
    return None


def _run_sql(con: duckdb.DuckDBPyConnection) -> list[dict]:
    """The comparison query on a connection that has `eval` and `mixture` views."""
    rel = con.execute(SQL.read_text())
    cols = [d[0] for d in rel.description]
    rows = [dict(zip(cols, r)) for r in rel.fetchall()]
    # SQL sorts model columns as text; order them by stage index so ten or more stages stay in order.
    models = sorted((c for c in cols if c not in _KEYS), key=lambda c: int(c.split(":", 1)[0]))
    return [{**{k: r[k] for k in _KEYS}, **{c: r[c] for c in models}} for r in rows]


def comparison_rows(root: str, eval_manifests: list[dict]) -> list[dict]:
    """Rows {suite, metric, source, '0:base', '1:<stage>', ...} of the comparison table, from
    the given evaluate manifests (and the mixture of the mix manifest they name)."""
    store = ArtifactStore(root)
    eval_files = [p for m in eval_manifests for p in store.paths(m, "eval")]
    if not eval_files:
        return []
    mix = _mix_manifest(store, eval_manifests)
    mix_files = store.paths(mix, "mixture") if mix else []
    con = duckdb.connect()
    try:
        con.execute(f"CREATE VIEW eval AS SELECT * FROM read_parquet({_files(eval_files)}, union_by_name = true)")
        if mix_files:
            con.execute(f"CREATE VIEW mixture AS SELECT stage, source, replay_from FROM read_parquet({_files(mix_files)})")
        else:
            con.execute("CREATE VIEW mixture AS SELECT NULL::VARCHAR AS stage, NULL::VARCHAR AS source, "
                        "NULL::VARCHAR AS replay_from WHERE false")
        return _run_sql(con)
    finally:
        con.close()


def catalog_comparison_rows(root: str) -> list[dict]:
    """The comparison from the catalog's `eval` and `mixture` views (the latest published run).

    `tuneline query` accepts one plain SELECT only, and a dynamic PIVOT is several
    statements to DuckDB, so this runs the report on its own read-only connection."""
    with readonly(root) as con:
        return _run_sql(con)


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def rows_markdown(rows: list[dict], title: str = "Evaluation: base vs stages") -> str:
    if not rows:
        return f"### {title}\n\n(no evaluation rows)\n"
    cols = list(rows[0])
    out = [f"### {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(_cell(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(out) + "\n"


def comparison_markdown(root: str, eval_manifests: list[dict]) -> str:
    """The base vs stages table as markdown (rows suite/metric/source, one column per model)."""
    return rows_markdown(comparison_rows(root, eval_manifests))


# -- the table people read: rounded, n, intervals, noise marked (like lm-eval's) ----------------
#: Metrics whose value is a mean of per-item scores in [0, 1]: their interval is the Wilson score
#: interval of a binomial proportion (accuracies, exact match; conservative for ROUGE-L, whose
#: per-item scores are fractions).
BOUNDED = ("accuracy", "accuracy_norm", "exact_match", "rouge_l")
#: Rows `<metric>_stderr` hold the standard error over records of a token-weighted mean
#: (`suites.loss_stderr`); they give `<metric>`'s interval (and perplexity's, as exp of loss's).
STDERR = "_stderr"
Z = 1.96  # 95% intervals
INTERVAL = "95% interval"


def wilson(metric: str, value: float | None, n: int | None) -> tuple[float, float] | None:
    """The 95% Wilson score interval (low, high) of a bounded mean metric over n items; None
    for other metrics. Unlike p ± 1.96 sqrt(p (1 - p) / n) it is not empty at p = 0 or 1: 0 of
    36 gives (0, 0.096)."""
    if value is None or not n or not metric.endswith(BOUNDED) or not 0 <= value <= 1:
        return None
    z2n = Z * Z / n
    centre = (value + z2n / 2) / (1 + z2n)
    half = Z / (1 + z2n) * math.sqrt(value * (1 - value) / n + z2n / (4 * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def difference_interval(p: float, ci: tuple[float, float], base: float,
                        base_ci: tuple[float, float]) -> tuple[float, float]:
    """95% interval of p - base from the two Wilson intervals (Newcombe's hybrid score method,
    "method 10" of Newcombe 1998): the difference is noise when the interval holds 0. It treats
    the two as independent samples, which is conservative for models scored on the same items."""
    d = p - base
    return (d - math.sqrt((p - ci[0]) ** 2 + (base_ci[1] - base) ** 2),
            d + math.sqrt((ci[1] - p) ** 2 + (base - base_ci[0]) ** 2))


def _on_loss_scale(metric: str, value: float) -> float:
    """Perplexity's intervals and differences are judged on its loss, log(perplexity)."""
    return math.log(value) if metric == "perplexity" else value


def _counts(root: str, eval_manifests: list[dict]) -> dict[tuple, int]:
    """(suite, metric, source or 'all', stage) -> n, from the eval tables."""
    store = ArtifactStore(root)
    counts = {}
    for m in eval_manifests:
        for path in store.paths(m, "eval"):
            for r in duckdb.sql(f"SELECT suite, metric, coalesce(source, 'all') AS source, stage, n FROM "
                                f"read_parquet({_files([path])}) WHERE task IS NULL").fetchall():
                counts[r[:4]] = r[4]
    return counts


def _fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.4f}" if abs(v) < 100 else f"{v:.1f}"


def _interval(metric: str, value, n, se) -> tuple[float, float] | None:
    """95% interval of a cell: Wilson for bounded means, ±1.96 standard errors for a metric with
    a stored standard error (exp of the loss interval for perplexity), else None."""
    if se is None or value is None:
        return wilson(metric, value, n)
    centre = _on_loss_scale(metric, value)
    low, high = centre - Z * se, centre + Z * se
    return (math.exp(low), math.exp(high)) if metric == "perplexity" else (low, high)


def _cells(metric: str, value, n, base, base_n, is_base: bool, se=None, base_se=None) -> dict:
    ci = _interval(metric, value, n, se)
    cell = {"value": value, "low": ci and ci[0], "high": ci and ci[1], "bounded": metric.endswith(BOUNDED),
            "text": _fmt(value) + (f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "")}
    if is_base or value is None or base is None:
        return cell | {"delta": None, "noise": None, "delta_text": ""}
    delta = value - base
    noise = None
    if se is not None and base_se is not None:  # independent standard errors (conservative, as below)
        noise = abs(_on_loss_scale(metric, value) - _on_loss_scale(metric, base)) <= Z * math.hypot(se, base_se)
    elif ci and (base_ci := wilson(metric, base, base_n)):
        low, high = difference_interval(value, ci, base, base_ci)
        noise = low <= 0 <= high
    return cell | {"delta": delta, "noise": noise,
                   "delta_text": ("+" if delta >= 0 else "") + _fmt(delta) + (" (noise)" if noise else "")}


def comparison_table(root: str, eval_manifests: list[dict]) -> list[dict]:
    """The comparison as people read it: one row per suite, metric and source with n, each
    model's rounded value and its 95% interval `[low, high]` (Wilson for bounded metrics,
    ±1.96 standard errors over records for loss, and exp of that for perplexity), and each
    stage's difference to the base model, marked `(noise)` when the 95% interval of the
    difference holds 0 (`difference_interval`; for loss the two standard errors combined).
    The `_stderr` rows are read into their metric's cells, not shown. Rows whose values are all
    zero or missing (nothing to compare) sort last."""
    rows = comparison_rows(root, eval_manifests)
    if not rows:
        return []
    stderr = {(r["suite"], r["metric"][: -len(STDERR)], r["source"]): r for r in rows if r["metric"].endswith(STDERR)}
    rows = [r for r in rows if not r["metric"].endswith(STDERR)]
    counts = _counts(root, eval_manifests)
    models = [c for c in rows[0] if c not in _KEYS]
    base = models[0]
    table = []
    for r in rows:
        key = (r["suite"], r["metric"], r["source"])
        se_row = stderr.get((key[0], "loss" if key[1] == "perplexity" else key[1], key[2]), {})
        ns = {m: counts.get(key + (m.split(":", 1)[1],)) for m in models}
        out = {"suite": key[0], "metric": key[1], "source": key[2], "n": max((v for v in ns.values() if v), default=None)}
        for m in models:
            c = _cells(key[1], r[m], ns[m], r[base], ns[base], m == base, se_row.get(m), se_row.get(base))
            out[m] = c["text"]
            if m != base:
                out[f"{m} Δ"] = c["delta_text"]
            out[f"_{m}"] = c
        table.append(out)
    informative = lambda row: any(row[f"_{m}"]["value"] for m in models)
    return sorted(table, key=lambda row: not informative(row))


def table_markdown(table: list[dict], title: str = "Evaluation: base vs stages") -> str:
    """Markdown of `comparison_table`, its title naming the interval, a note on what the
    brackets, Δ and (noise) mean."""
    if not table:
        return f"### {title}\n\n(no evaluation rows)\n"
    cols = [c for c in table[0] if not c.startswith("_")]
    out = [f"### {title} (value [{INTERVAL}])", "", "| " + " | ".join(cols) + " |",
           "|" + "|".join("---" if c in _KEYS else "---:" for c in cols) + "|"]
    out += ["| " + " | ".join("" if r[c] is None else str(r[c]) for c in cols) + " |" for r in table]
    out += ["", NOTE]
    return "\n".join(out) + "\n"


#: What the table's numbers mean (under the markdown table and the HTML report's).
NOTE = ("n: items (tokens for loss and perplexity). [low, high]: the 95% interval: Wilson's score interval for "
        "accuracy and exact match (conservative for ROUGE-L), not empty at 0 or 1; for loss, ±1.96 standard errors "
        "over held-out records (not tokens: a reply's tokens are not independent), and its exp for perplexity. "
        "Δ: the stage minus the base model; (noise): the 95% interval of the difference holds 0 (Newcombe's score "
        "method from the two Wilson intervals; for loss and perplexity the two standard errors combined). Both "
        "treat the models' scores as independent samples, which is conservative for models scored on the same items.")


def table_plain(table: list[dict]) -> list[dict]:
    """The rows for a Prefect table artifact (display columns only)."""
    return [{k: ("" if v is None else v) for k, v in r.items() if not k.startswith("_")} for r in table]
