"""The comparison of base and every stage, built by sql/reports/eval_comparison.sql over
the `eval` tables of evaluate manifests (and the mixture their mix manifest names)."""
from __future__ import annotations

import math
from pathlib import Path

import duckdb

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
    from tasks.catalog import readonly

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
