"""What a finished step shows: a `runs` row per task, the catalog rebuilt, Prefect artifacts."""
from __future__ import annotations

import time

from tasks.store import ArtifactStore, RunLog, atomic_write_bytes


def step_rows(step: str, manifests: list[dict]) -> list[dict]:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    rows = []
    for m in manifests:
        s = m.get("stats", {})
        rows.append(
            {
                "step": step,
                "label": m.get("label", ""),
                "key": m["key"],
                "dir": m["dir"],
                "skipped": bool(m.get("skipped", False)),
                "rows_in": s.get("rows_in", 0),
                "rows_out": s.get("rows_out", 0),
                "rows_rejected": s.get("rows_rejected", 0),
                # convert renders one raw row with several templates (P3): records it wrote
                "records_out": s.get("records_out", s.get("rows_out", 0)),
                "seconds": s.get("seconds", 0.0),
                "finished_at": now,
            }
        )
    return rows


def publish(root: str, run_id: str, recipe_path: str, step: str, manifests: list[dict]) -> None:
    store = ArtifactStore(root)
    rows = step_rows(step, manifests)
    store.publish_step(RunLog(store, run_id, recipe_path), step, manifests, rows)
    _prefect_table(step, rows, store)
    if step == "evaluate":
        _eval_comparison(store, manifests)
    report = step_report(step, manifests)
    if report:
        _prefect_markdown(f"{step}-report", report, f"{step}: the report of each of its {len(manifests)} task(s)")


def step_report(step: str, manifests: list[dict]) -> str:
    """One markdown report per step: every task's report (each shard, each stage) under its
    label, so no shard's report hides another's behind a shared artifact key."""
    parts = [(m.get("label", ""), m.get("stats", {}).get("report_markdown")) for m in manifests]
    parts = [(label, md) for label, md in parts if md]
    if len(parts) == 1:
        return parts[0][1]
    return "\n\n".join(f"#### {step} {label}\n\n{md}" for label, md in parts)


def _key(s: str) -> str:
    return "".join(c if c.isalnum() or c == "-" else "-" for c in s.lower())[:100]


def _prefect_table(step: str, rows: list[dict], store: ArtifactStore) -> None:
    table = [
        {k: r[k] for k in ("label", "rows_in", "rows_out", "rows_rejected", "records_out", "skipped", "seconds")}
        | {"artifact": str(store.root / r["dir"])}
        for r in rows
    ]
    _artifact("table", f"{step}-counts", f"{step}: rows in/out/rejected per task; catalog: {store.root / 'catalog.duckdb'}",
              table=table)


def _prefect_markdown(key: str, markdown: str, description: str) -> None:
    _artifact("markdown", key, description, markdown=markdown)


def _eval_comparison(store: ArtifactStore, manifests: list[dict]) -> None:
    """Base vs every stage: `<out>/eval_comparison.md` and the `eval-comparison` table artifact."""
    from tasks.evaluate.report import REPORT_FILE, comparison_table, table_markdown, table_plain

    table = comparison_table(str(store.root), manifests)
    atomic_write_bytes(store.root / REPORT_FILE, table_markdown(table).encode())
    _artifact("table", "eval-comparison", f"Evaluation, base vs stages (± standard error, Δ to base, (noise) "
              f"within 1.96 combined standard errors); also {store.root / REPORT_FILE}", table=table_plain(table))


def _artifact(kind: str, key: str, description: str, **content) -> None:
    """A Prefect table or markdown artifact of the current run (none outside a flow run)."""
    from prefect import artifacts

    create = artifacts.create_table_artifact if kind == "table" else artifacts.create_markdown_artifact
    try:
        create(key=_key(key), description=description, **content)
    except Exception:  # outside a flow run there is nowhere to publish
        pass
