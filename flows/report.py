"""What a finished step shows: a `runs` row per task, the catalog rebuilt, Prefect artifacts."""
from __future__ import annotations

import re
import time

from tasks import catalog, html_report, plots
from tasks.step import logger
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
    catalog.publish_step(store, RunLog(store, run_id, recipe_path), step, manifests, rows)
    _prefect_table(step, rows, store)
    figure = None
    if step == "evaluate":
        figure = _eval_comparison(store, run_id, manifests)
    elif step in FIGURES:
        figure = plots.save(store.root / plots.FIGURES / run_id, FIGURES[step][0], FIGURES[step][1](store, manifests))
    report = step_report(step, manifests)
    if figure is not None:
        report = f"![{step}]({plots.data_uri(figure.read_bytes())})\n\n_{figure}_\n\n" + report
    if report:
        _prefect_markdown(f"{step}-report", report, f"{step}: the report of each of its {len(manifests)} task(s)")


def _loss(store: ArtifactStore, manifests: list[dict]) -> bytes | None:
    log = store.read(manifests, "train_log", columns=["stage", "step", "loss"])
    return plots.loss_curves(log.to_pylist() if log is not None else [])


def _mixture(store: ArtifactStore, manifests: list[dict]) -> bytes | None:
    report = store.read(manifests, "mixture_report")
    return plots.mixture_shares(report.to_pylist() if report is not None else [])


#: step -> (figure name, what draws it from the step's manifests)
FIGURES = {"train": ("loss", _loss), "mix": ("mixture", _mixture)}


_MERMAID = re.compile(r"```mermaid.*?```\n?", re.S)  # a chart the default UI shows as source: the figure replaces it


def step_report(step: str, manifests: list[dict]) -> str:
    """One markdown report per step: every task's report (each shard, each stage) under its
    label, so no shard's report hides another's behind a shared artifact key."""
    parts = [(m.get("label", ""), _MERMAID.sub("", m.get("stats", {}).get("report_markdown") or "")) for m in manifests]
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


def _eval_comparison(store: ArtifactStore, run_id: str, manifests: list[dict]):
    """Base vs every stage: `<out>/eval_comparison.md`, the `eval-comparison` table artifact,
    and the figure (returned: its path, or None)."""
    from tasks.evaluate.report import INTERVAL, REPORT_FILE, comparison_table, table_markdown, table_plain

    table = comparison_table(str(store.root), manifests)
    atomic_write_bytes(store.root / REPORT_FILE, table_markdown(table).encode())
    _artifact("table", "eval-comparison", f"Evaluation, base vs stages: value [{INTERVAL}], Δ to base, (noise) "
              f"where the 95% interval of the difference holds 0; also {store.root / REPORT_FILE}",
              table=table_plain(table))
    return plots.save(store.root / plots.FIGURES / run_id, "evaluation", plots.evaluation(table))


def _artifact(kind: str, key: str, description: str, **content) -> None:
    """A Prefect table or markdown artifact of the current run (none outside a flow run)."""
    from prefect import artifacts
    from prefect.context import FlowRunContext, TaskRunContext

    if FlowRunContext.get() is None and TaskRunContext.get() is None:
        return  # outside a flow run there is nowhere to publish
    create = artifacts.create_table_artifact if kind == "table" else artifacts.create_markdown_artifact
    try:
        create(key=_key(key), description=description, **content)
    except Exception as exc:  # the artifacts, catalog and HTML report are written: a UI report never fails a step
        logger().warning(f"Prefect artifact {key} not published: {exc}")


def run_report(root: str, run_id: str, recipe_path: str) -> str:
    """The run's static HTML report, and a `run-report` artifact of the pipeline run that
    links it and every step's report artifact. Returns the HTML file's path."""
    from prefect.settings import PREFECT_UI_URL

    path = html_report.write(root, run_id, recipe_path)
    ui = (PREFECT_UI_URL.value() or "").rstrip("/")
    steps = [s for s in ArtifactStore(root).latest() if s != "dedup-signatures"]
    links = [f"- [{s} report]({ui}/artifacts/key/{_key(s + '-report')})" for s in steps]
    links.append(f"- [evaluation table]({ui}/artifacts/key/eval-comparison)" if "evaluate" in steps else "")
    markdown = (f"### Tuneline run {run_id}\n\nHTML report (one file, open it in a browser): `{path}`\n\n"
                "Reports of the steps (their subflows' artifacts):\n\n" + "\n".join(x for x in links if x))
    _prefect_markdown("run-report", markdown, f"run {run_id}: the HTML report and every step's report")
    return str(path)
