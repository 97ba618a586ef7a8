"""The `train` step: one mixture stage, trained by the recipe under `accelerate launch`.

`train_stage` joins the stage's mixture rows to the validated records (in `position`
order), writes a stage config, runs `accelerate launch -m tasks.train_sft.loop` in a
subprocess (stdout streamed into the log) and publishes what it saved: weights or
adapter, tokenizer, config, training args, plus the `train_log`, `label_audit` and
`rejects` tables. The working directory `<root>/train/.work-<key>/` holds checkpoints,
so re-running a killed stage resumes it; it is removed once the stage is published.

`TUNELINE_TRAIN_INPROCESS=1` runs the recipe in this process instead (one device, no
`accelerate launch`): a debugging aid, also used by tests to spare a subprocess start.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import deque
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.config import TrainConfig, as_recipe
from tasks.errors import TunelineError
from tasks.model import model_source, resolve_device
from tasks.schema import REJECTS, reject_row
from tasks.step import input_ref, logger, run_step
from tasks.store import MANIFEST, ArtifactStore, atomic_write_json, file_sha256, step_key
from tasks.train_sft import loop
from tasks.train_sft.loop import AUDIT_SCHEMA, COMPLETE, LOG_PREFIX

STEP = "train"
VERSION = 1
INPROCESS_ENV = "TUNELINE_TRAIN_INPROCESS"
REPO = Path(__file__).resolve().parents[2]
#: glibc malloc settings: no mmap/trim churn for the many short-lived activation buffers (1.6x on CPU here).
MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "17179869184"}

TRAIN_LOG = pa.schema(
    [
        ("stage", pa.string()),
        ("step", pa.int64()),
        ("loss", pa.float64()),
        ("lr", pa.float64()),
        ("grad_norm", pa.float64()),
        ("tokens", pa.int64()),
        ("tokens_per_s", pa.float64()),
        ("example_ids", pa.list_(pa.string())),
        ("positions", pa.list_(pa.int64())),
    ]
)
LABEL_AUDIT = pa.schema([("stage", pa.string()), *AUDIT_SCHEMA])  # the recipe's audit, per stage
#: Files of the recipe's output that are published with the step (the rest become tables).
TABLE_FILES = {"train_log.jsonl", "label_audit.parquet", "dropped.jsonl", COMPLETE}


class TrainingFailed(TunelineError):
    """The training subprocess exited with an error."""


def validate_manifest_of(store: ArtifactStore, mix_manifest: dict) -> dict:
    """The validate manifest the mix step read (recorded in its `inputs`)."""
    found = store.upstream(mix_manifest, "validate")
    if found is None:
        raise TunelineError(f"mix manifest {mix_manifest.get('dir')}: the validate manifest its inputs name is "
                            f"missing, not published or does not verify")
    return found


def write_stage_rows(store: ArtifactStore, mix_manifest: dict, stage: str, dest: Path) -> int:
    """The stage's mixture rows joined to their records, in position order, as Parquet at `dest`."""
    import duckdb

    mix_files = [str(p) for p in store.paths(mix_manifest, "mixture")]
    rec_files = [str(p) for p in store.paths(validate_manifest_of(store, mix_manifest), "records_valid")]
    if not mix_files or not rec_files:
        raise TunelineError(f"stage {stage}: mix manifest has no `mixture` table or validate no `records_valid`")
    con = duckdb.connect()
    try:
        con.execute(
            """CREATE TEMP TABLE rows AS
               SELECT m.position, m.record_id, r.source, r.origin_file, r.origin_row, r.messages, r.tools
               FROM read_parquet(?) m
               LEFT JOIN (SELECT DISTINCT ON (record_id) record_id, source, origin_file, origin_row, messages, tools
                          FROM read_parquet(?)) r USING (record_id)
               WHERE m.stage = ? ORDER BY m.position""",
            [mix_files, rec_files, stage],
        )
        n, missing, first = con.execute(
            "SELECT count(*), count(*) FILTER (WHERE messages IS NULL), "
            "min(record_id) FILTER (WHERE messages IS NULL) FROM rows"
        ).fetchone()
        if n == 0:
            raise TunelineError(f"stage {stage}: the mixture has no rows for this stage")
        if missing:
            raise TunelineError(f"stage {stage}: {missing} mixture rows name records not in records_valid, e.g. {first}")
        tmp = dest.with_name(dest.name + ".tmp")
        con.execute(f"COPY (SELECT * FROM rows ORDER BY position) TO '{tmp}' (FORMAT parquet)")
        os.replace(tmp, dest)
    finally:
        con.close()
    return n


def launch_command(cfg: TrainConfig, config_path: Path, device: str) -> list[str]:
    """`accelerate launch` of the recipe: a config file when given, else one process (CPU or one GPU)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if cfg.accelerate_config:
        cmd += ["--config_file", cfg.accelerate_config]
    elif device == "cpu":
        cmd += ["--cpu", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no"]
    else:
        cmd += ["--num_processes", "1", "--num_machines", "1", "--dynamo_backend", "no",
                "--mixed_precision", "bf16" if cfg.bf16 else "no"]
    return cmd + ["-m", "tasks.train_sft.loop", "--config", str(config_path)]


def subprocess_env() -> dict:
    env = {**os.environ, **MALLOC_ENV}
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), env.get("PYTHONPATH", "")] if p)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def run_logged(cmd: list[str], env: dict, label: str) -> None:
    """Run `cmd`, streaming its output into the step log; raise with the last lines on failure."""
    log = logger()
    log.info(f"{label}: {' '.join(cmd)}")
    tail: deque[str] = deque(maxlen=40)
    proc = subprocess.Popen(cmd, env=env, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    for line in proc.stdout:
        line = line.rstrip("\n")
        tail.append(line)
        if line.startswith(LOG_PREFIX):
            r = json.loads(line[len(LOG_PREFIX):])
            log.info(f"{label} step {r['step']}: loss {r['loss']:.4f} lr {r['lr']:.2e} "
                     f"grad_norm {r['grad_norm']:.3f} {r['tokens_per_s']:,.0f} tok/s")
        elif line.strip():
            log.info(f"{label}: {line}")
    rc = proc.wait()
    if rc != 0:
        raise TrainingFailed(f"{label}: training exited with status {rc}; last output:\n" + "\n".join(tail))


def stage_config(root: str, recipe: dict, stage: str, tokenizer_dir: Path, init_manifest: dict | None,
                 work: Path) -> dict:
    return {
        "stage": stage,
        "recipe": as_recipe(recipe).model_dump(by_alias=True),  # plain data for the training process
        "root": str(Path(root).resolve()),
        "tokenizer_dir": str(tokenizer_dir),
        "rows_path": str(work / "rows.parquet"),
        "init": init_manifest,
        "work_dir": str(work),
        "out_dir": str(work / "final"),
    }


def loss_chart(losses: list[float], title: str, points: int = 40) -> str:
    """A mermaid xychart of the loss (at most `points` points) plus a text sparkline."""
    if not losses:
        return "(no steps)"
    stride = max(1, len(losses) // points)
    picked = [(i + 1, losses[i]) for i in range(0, len(losses), stride)]
    if picked[-1][0] != len(losses):
        picked.append((len(losses), losses[-1]))
    blocks = "▁▂▃▄▅▆▇█"
    lo, hi = min(losses), max(losses)
    spark = "".join(blocks[int((v - lo) / (hi - lo + 1e-12) * (len(blocks) - 1))] for _, v in picked)
    return (
        "```mermaid\nxychart-beta\n"
        f'  title "{title}"\n'
        f"  x-axis \"step\" [{', '.join(str(s) for s, _ in picked)}]\n"
        f"  y-axis \"loss\"\n  line [{', '.join(f'{v:.4f}' for _, v in picked)}]\n```\n\n"
        f"`{spark}` loss {losses[0]:.4f} → {losses[-1]:.4f}"
    )


def report(stage: str, log: list[dict], stats: dict) -> str:
    losses = [r["loss"] for r in log]
    tps = [r["tokens_per_s"] for r in log]
    lines = [
        f"## train stage `{stage}`",
        f"rows {stats['rows_in']:,} · trained {stats['rows_out']:,} · dropped {stats['rows_rejected']:,} · "
        f"steps {len(log)} · tokens {sum(r['tokens'] for r in log):,} · "
        f"median {sorted(tps)[len(tps) // 2] if tps else 0:,.0f} tokens/s",
        f"started from `{stats['init_weights_sha256'] or 'base model'}`; weights `{stats['weights_sha256'][:16]}`",
        "",
        loss_chart(losses, f"loss, stage {stage}"),
    ]
    return "\n".join(lines)


def _rejects(rows_path: Path, dropped: list[dict], stage: str) -> list[dict]:
    if not dropped:
        return []
    t = pq.read_table(rows_path, columns=["position", "source", "origin_file", "origin_row"]).to_pydict()
    where = {p: (s, f, r) for p, s, f, r in zip(t["position"], t["source"], t["origin_file"], t["origin_row"])}
    out = []
    for d in dropped:
        s, f, r = where[d["position"]]
        out.append(reject_row(STEP, d["reason"], source=s, origin_file=f, origin_row=r, record_id=d["record_id"],
                              detail=f"stage {stage}, position {d['position']}: {d['total_tokens']} tokens, "
                                     f"{d['trained_tokens']} trained within max_seq_len"))
    return out


def train_stage(root: str, recipe: dict, mix_manifest: dict, tokenizer_manifest: dict, stage: str,
                init_manifest: dict | None) -> dict:
    """Step `train` for one stage; `init_manifest` is the previous stage's (None: the base model)."""
    rec = as_recipe(recipe)
    cfg = rec.train
    if stage not in [s.name for s in rec.stages]:
        raise TunelineError(f"unknown stage {stage!r}; recipe stages: {[s.name for s in rec.stages]}")
    store = ArtifactStore(root)
    inputs = [input_ref(mix_manifest), input_ref(tokenizer_manifest),
              None if init_manifest is None else input_ref(init_manifest)]
    config = {"train": cfg.model_dump(), "stage": stage,
              "model_source": None if cfg.model == "tiny" else model_source(rec)}
    key = step_key(STEP, VERSION, inputs, config)
    work = store.inside(store.root / STEP / f".work-{key}")
    label = f"stage {stage}"

    def body(writer) -> None:
        work.mkdir(parents=True, exist_ok=True)
        n_rows = write_stage_rows(store, mix_manifest, stage, work / "rows.parquet")
        scfg = stage_config(root, recipe, stage, store.root / tokenizer_manifest["dir"], init_manifest, work)
        atomic_write_json(work / "stage.json", scfg)
        device = resolve_device(cfg.device)
        if os.environ.get(INPROCESS_ENV) == "1":
            loop.run(scfg)
        else:
            run_logged(launch_command(cfg, work / "stage.json", device), subprocess_env(), label)
        out = work / "final"
        if not (out / COMPLETE).exists():
            raise TrainingFailed(f"{label}: the recipe exited without a complete output in {out}")
        log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines() if x]
        dropped = [json.loads(x) for x in (out / "dropped.jsonl").read_text().splitlines() if x]
        audit = pq.read_table(out / "label_audit.parquet")
        audit = audit.add_column(0, "stage", pa.array([stage] * audit.num_rows, pa.string()))
        writer.write("train_log", TRAIN_LOG, log)
        writer.write("label_audit", LABEL_AUDIT, audit)
        writer.write("rejects", REJECTS, _rejects(work / "rows.parquet", dropped, stage))
        for f in sorted(out.iterdir()):
            if f.is_file() and f.name not in TABLE_FILES:
                writer.attach_file(f.name, copy_of=f)
        result = json.loads((out / "result.json").read_text())
        writer.stats.update(
            rows_in=n_rows, rows_out=n_rows - len(dropped), rows_rejected=len(dropped), stage=stage,
            steps=len(log), first_loss=log[0]["loss"] if log else None, last_loss=log[-1]["loss"] if log else None,
            tokens=sum(r["tokens"] for r in log), adapter=result["adapter"], adapter_base=result["adapter_base"],
            init=None if init_manifest is None else input_ref(init_manifest),
            init_weights_sha256=result["init_weights_sha256"], weights_sha256=result["weights_sha256"],
            mixture_manifest_sha256=file_sha256(store.root / mix_manifest["dir"] / MANIFEST),
            mixture_key=mix_manifest["key"], method=cfg.method, device=device,
        )
        writer.stats["report_markdown"] = report(stage, log, writer.stats)

    manifest = run_step(store, STEP, VERSION, inputs, config, label, body)
    if not manifest.get("skipped"):
        shutil.rmtree(work, ignore_errors=True)  # published: the checkpoints are no longer needed
    return manifest
