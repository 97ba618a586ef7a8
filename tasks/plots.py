"""Pictures of a run, drawn with matplotlib from the catalog's tables: the training loss per
stage, the mixture's target vs achieved shares, and the evaluation per model with error bars.
Each is a PNG under `<artifacts>/figures/<run id>/` (the HTML report and the Prefect artifacts embed
the same bytes)."""
from __future__ import annotations

import base64
import io
from pathlib import Path

from tasks.store import atomic_write_bytes

FIGURES = "figures"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def loss_curves(train_log: list[dict]) -> bytes | None:
    """Loss per optimizer step, one line per stage (rows: stage, step, loss)."""
    if not train_log:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6), layout="constrained")
    for stage in dict.fromkeys(r["stage"] for r in train_log):
        pts = sorted((r["step"], r["loss"]) for r in train_log if r["stage"] == stage and r["loss"] is not None)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 60 else None, label=stage)
    ax.set(xlabel="optimizer step", ylabel="training loss (assistant tokens)", title="Training loss per stage")
    ax.grid(alpha=0.3)
    ax.legend(title="stage")
    return _png(fig)


def mixture_shares(report: list[dict]) -> bytes | None:
    """Target vs achieved share per source, one panel per stage (rows of `mixture_report`)."""
    if not report:
        return None
    plt = _pyplot()
    stages = list(dict.fromkeys(r["stage"] for r in sorted(report, key=lambda r: r["stage_index"])))
    fig, axes = plt.subplots(1, len(stages), figsize=(4.2 * len(stages), 3.4), squeeze=False, layout="constrained")
    for ax, stage in zip(axes[0], stages):
        rows = [r for r in report if r["stage"] == stage]
        ys = range(len(rows))
        ax.barh([y + 0.2 for y in ys], [r["target_share"] for r in rows], height=0.4, label="target", color="#bbb")
        ax.barh([y - 0.2 for y in ys], [r["achieved_share"] for r in rows], height=0.4, label="achieved")
        ax.set_yticks(list(ys), [r["source"] for r in rows])
        ax.set(xlabel=f"share ({rows[0]['unit']})", title=f"stage {stage}")
        ax.invert_yaxis()
    axes[0][0].legend(loc="lower right")
    fig.suptitle("Mixture: target vs achieved share per source")
    return _png(fig)


def evaluation(table: list[dict]) -> bytes | None:
    """Each model's value and 95% interval (Wilson for bounded metrics, standard errors for loss
    and perplexity) over all sources, for the metrics with one (rows of
    `tasks.evaluate.report.comparison_table`), one panel per suite and metric."""
    rows = [r for r in table if r["source"] == "all" and any(r[k]["low"] is not None
                                                             for k in r if k.startswith("_"))]
    if not rows:
        return None
    plt = _pyplot()
    models = [k[1:] for k in rows[0] if k.startswith("_")]
    fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 3.4), squeeze=False, layout="constrained")
    for ax, r in zip(axes[0], rows):
        cells = [r[f"_{m}"] for m in models]
        values = [c["value"] or 0 for c in cells]
        below = [v - c["low"] if c["low"] is not None else 0 for v, c in zip(values, cells)]
        above = [c["high"] - v if c["high"] is not None else 0 for v, c in zip(values, cells)]
        ax.bar(range(len(models)), values, yerr=[below, above], capsize=4,
               color=["#999"] + ["C0"] * (len(models) - 1))
        ax.set_xticks(range(len(models)), [m.split(":", 1)[1] for m in models])
        ax.set(title=f"{r['suite']} {r['metric']}\n(n={r['n']})")
        if cells[0]["bounded"]:
            ax.set_ylim(0, 1)
    fig.suptitle("Evaluation per model (95% interval)")
    return _png(fig)


def save(directory: str | Path, name: str, png: bytes | None) -> Path | None:
    """Write `<directory>/<name>.png` (atomically); None when there is nothing to draw."""
    if png is None:
        return None
    path = Path(directory) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, png)
    return path


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()
