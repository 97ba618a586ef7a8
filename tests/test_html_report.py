"""The run's pictures and its one-file HTML report, from real step tables through the real
publish path (catalog, figures); opened in headless Chromium when it is installed."""
from __future__ import annotations

import base64
import re
import shutil
import subprocess

import pytest

from flows import report
from tasks import html_report, plots
from tasks.evaluate import EVAL
from tasks.mix import MIXTURE_REPORT, MIXTURE_UNSELECTED
from tasks.schema import REJECTS, reject_row
from tasks.step import run_step
from tasks.train_sft.launch import TRAIN_LOG

RUN = "20260101T000000-abcdef"
PNG = b"\x89PNG\r\n\x1a\n"


def _step(store, step, label, tables: dict, rows: int = 0):
    def body(w):
        for name, (schema, data) in tables.items():
            w.write(name, schema, data)
        w.stats.update(rows_in=rows, rows_out=rows)

    m = run_step(store, step, 1, {"label": label}, {}, label, body)
    report.publish(str(store.root), RUN, "demo/recipe.yaml", step, [m])
    return m


@pytest.fixture
def published(store):
    rejects = [reject_row("ingest", "bad_json", source="dolly", origin_file="dolly.jsonl", origin_row=i,
                          detail=f"line {i}: Expecting value", raw="{oops") for i in range(3)]
    rejects.append(reject_row("ingest", "missing_field", source="dolly", origin_file="dolly.jsonl", origin_row=9,
                              detail="field 'response' is missing", raw='{"instruction": "x"}'))
    _step(store, "ingest", "dolly#000:dolly.jsonl", {"rejects": (REJECTS, rejects)})
    mix_report = [{"stage": "nlp", "stage_index": 0, "source": s, "unit": "examples", "rows": r, "tokens": 10 * r,
                   "distinct_rows": r, "available_rows": r, "target_share": t, "achieved_share": a,
                   "share_error": abs(a - t), "share_tolerance": 0.02, "allowed_error": 0.03, "repeat_factor": 1.0,
                   "max_repeat": 1} for s, r, t, a in (("flan", 60, 0.6, 0.6), ("p3", 40, 0.4, 0.4))]
    unselected = [{"stage": "nlp", "stage_index": 0, "record_id": "r1", "source": "flan", "task": "anli",
                   "reason": "cap_per_task", "detail": "task 'anli' has 30 rows, cap_per_task 10"}]
    _step(store, "mix", "stages", {"mixture_report": (MIXTURE_REPORT, mix_report),
                                   "mixture_unselected": (MIXTURE_UNSELECTED, unselected)})
    log = [{"stage": st, "step": i, "loss": 3.0 - 0.1 * i - k, "lr": 1e-3, "grad_norm": 1.0, "tokens": 100,
            "tokens_per_s": 50.0, "example_ids": [], "positions": []} for k, st in enumerate(("nlp", "chat"))
           for i in range(12)]
    _step(store, "train", "stages", {"train_log": (TRAIN_LOG, log)})
    evals = []
    for index, stage, acc in ((0, "base", 0.40), (1, "nlp", 0.75)):
        rows = [{"run_id": None, "stage": stage, "stage_index": index, "model_hash": stage, "mixture_hash": "m",
                 "suite": "heldout", "source": None, "task": None, "metric": m, "value": v, "n": n}
                for m, v, n in (("mc_accuracy", acc, 120), ("loss", 3 - acc, 4000), ("loss_stderr", 0.05, 60))]
        evals.append(run_step(store, "evaluate", 1, {"stage": stage}, {}, stage,
                              lambda w, rows=rows: (w.write("eval", EVAL, rows), w.stats.update(rows_in=2, rows_out=2))))
    report.publish(str(store.root), RUN, "demo/recipe.yaml", "evaluate", evals)
    return store


def test_figures_are_pngs_in_the_artifacts_directory(published):
    figures = published.root / plots.FIGURES / RUN
    assert sorted(p.name for p in figures.iterdir()) == ["evaluation.png", "loss.png", "mixture.png"]
    assert all(p.read_bytes().startswith(PNG) and p.stat().st_size > 5000 for p in figures.iterdir())


def test_html_report_is_one_file_with_everything(published):
    path = html_report.write(published.root, RUN, "demo/recipe.yaml")
    page = path.read_text()
    assert path == published.root / "reports" / f"{RUN}.html" and (published.root / "report.html").read_text() == page
    for title in ("Steps", "Rejects by reason", "Mixture", "did not select", "Training loss", "Evaluation"):
        assert title in page, title
    assert "bad_json" in page and "line " in page and "{oops" in page  # a reason, its count, an example
    assert "cap_per_task" in page and "0.7500 [0.6656, 0.8189]" in page  # unselected rows; eval with its interval
    assert "2.2500 [2.1520, 2.3480]" in page  # loss ± 1.96 standard errors
    assert "Wilson" in page and "standard errors" in page  # the note on the intervals
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 3 and all(base64.b64decode(i).startswith(PNG) for i in images)
    assert "http" not in page  # nothing to fetch: it opens offline, anywhere


@pytest.mark.skipif(shutil.which("chromium") is None, reason="headless Chromium not installed")
def test_html_report_renders_in_headless_chromium(published, tmp_path):
    path = html_report.write(published.root, RUN)
    dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          "--virtual-time-budget=3000", path.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<table>") >= 4 and dom.stdout.count("<img") == 3
    shot = tmp_path / "report.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1200,900", path.as_uri()], capture_output=True, timeout=120)
    assert shot.read_bytes().startswith(PNG)
