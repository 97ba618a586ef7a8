"""One static HTML file per run (`<artifacts>/reports/<run id>.html`, and `report.html` for
the latest): steps and counts, rejects by reason with an example of each, the mixture, the
loss curves, and the evaluation table, with the figures embedded, so it opens in any
browser, offline, copied anywhere."""
from __future__ import annotations

import html
from pathlib import Path

from tasks import catalog, plots
from tasks.store import ArtifactStore, atomic_write_bytes

REPORTS = "reports"
LATEST = "report.html"
STYLE = """body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td.t,th.t{text-align:left}td.x{max-width:420px;overflow-wrap:anywhere;font-size:12px;text-align:left}
img{max-width:100%;border:1px solid #eee}h2{border-bottom:1px solid #ddd;margin-top:1.6em}.muted{color:#777}"""

QUERIES = {
    "steps": ("runs", "SELECT step, label, rows_in, rows_out, rows_rejected, records_out, skipped, seconds "
                      "FROM runs WHERE run_id = ? ORDER BY finished_at, label"),
    "rejects": ("rejects", "SELECT step, reason, count(*) AS n, any_value(detail) AS example_detail, "
                           "any_value(origin_file || ':' || origin_row) AS example_origin, "
                           "any_value(raw_prefix) AS example_row FROM rejects GROUP BY ALL ORDER BY step, n DESC"),
    "mixture": ("mixture_report", "SELECT stage, source, unit, rows, tokens, round(target_share, 4) AS target, "
                                  "round(achieved_share, 4) AS achieved, round(repeat_factor, 3) AS repeat_factor "
                                  "FROM mixture_report ORDER BY stage_index, source"),
    "unselected": ("mixture_unselected", "SELECT coalesce(stage, '(none)') AS stage, source, reason, count(*) AS n, "
                                         "any_value(detail) AS detail FROM mixture_unselected GROUP BY ALL "
                                         "ORDER BY 1, n DESC"),
}


def _table(cols: list[str], rows: list[tuple], text_cols: tuple[str, ...] = ()) -> str:
    def td(c, v):
        cls = "x" if c.startswith("example") or c == "detail" else ("t" if c in text_cols or isinstance(v, str) else "")
        shown = "" if v is None else (f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v))
        return f'<td class="{cls}">{html.escape(shown)}</td>'

    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(td(c, v) for c, v in zip(cols, r)) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _catalog_sections(root: Path, run_id: str) -> dict[str, str]:
    out = {}
    with catalog.readonly(root) as con:
        views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
        for name, (view, sql) in QUERIES.items():
            if view not in views:
                continue
            rel = con.execute(sql, [run_id] if "?" in sql else [])
            out[name] = _table([d[0] for d in rel.description], rel.fetchall())
    return out


def _figure(root: Path, run_id: str, name: str, caption: str) -> str:
    path = root / plots.FIGURES / run_id / f"{name}.png"
    if not path.exists():
        return ""
    return f'<figure><img alt="{caption}" src="{plots.data_uri(path.read_bytes())}"><figcaption class="muted">' \
           f"{html.escape(caption)} ({html.escape(str(path.relative_to(root)))})</figcaption></figure>"


def _evaluation(store: ArtifactStore) -> str:
    if not store.latest().get("evaluate"):
        return ""  # and no import of tasks.evaluate (torch: seconds)
    from tasks.evaluate.report import NOTE, comparison_table

    table = comparison_table(str(store.root), store.latest_manifests("evaluate"))
    if not table:
        return ""
    cols = [c for c in table[0] if not c.startswith("_")]
    rows = [tuple(r[c] for c in cols) for r in table]
    return _table(cols, rows) + f'<p class="muted">{html.escape(NOTE)}</p>'


def write(root: str | Path, run_id: str, recipe: str = "") -> Path:
    """Write the run's report and `report.html`; returns the run's file."""
    store = ArtifactStore(root)
    root = store.root
    parts = _catalog_sections(root, run_id)
    sections = [
        ("Steps", parts.get("steps", "")),
        ("Rejects by reason (one example each)", parts.get("rejects", "")),
        ("Mixture", _figure(root, run_id, "mixture", "target vs achieved share per source") + parts.get("mixture", "")),
        ("Validated rows the mixture did not select", parts.get("unselected", "")),
        ("Training loss", _figure(root, run_id, "loss", "training loss per stage")),
        ("Evaluation: base vs stages", _figure(root, run_id, "evaluation", "evaluation per model") + _evaluation(store)),
    ]
    body = "".join(f"<h2>{html.escape(title)}</h2>{content}" for title, content in sections if content)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>Tuneline run {html.escape(run_id)}</title>"
            f"<style>{STYLE}</style></head><body><h1>Tuneline run {html.escape(run_id)}</h1>"
            f"<p class='muted'>recipe {html.escape(recipe)} · artifacts {html.escape(str(root))} · catalog "
            f"<code>catalog.duckdb</code> (cd there and run <code>duckdb catalog.duckdb</code>)</p>{body}</body></html>")
    path = root / REPORTS / f"{run_id}.html"
    path.parent.mkdir(exist_ok=True)
    atomic_write_bytes(path, page.encode())
    atomic_write_bytes(root / LATEST, page.encode())
    return path
