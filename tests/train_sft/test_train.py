"""The recipe and the `train` step: label audit gate, resume after a kill, two chained stages."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from train_sft_fixtures import make_mix, make_records, make_validate, recipe_dict

from tasks.model import load_for_inference, weights_sha256
from tasks.store import ArtifactStore
from tasks.train_sft import launch, loop


def _stage_cfg(root, rec, mm, tm, stage, work: Path, init=None) -> dict:
    store = ArtifactStore(root)
    work.mkdir(parents=True, exist_ok=True)
    launch.write_stage_rows(store, mm, stage, work / "rows.parquet")
    return launch.stage_config(root, rec, stage, store.root / tm["dir"], init, work)


def _log(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]


def _subprocess(cfg: dict, path: Path, env_extra: dict) -> int:
    path.write_text(json.dumps(cfg))
    env = {**launch.subprocess_env(), **env_extra}
    return subprocess.run([sys.executable, "-m", "tasks.train_sft.loop", "--config", str(path)], env=env,
                          cwd=launch.REPO, capture_output=True, text=True).returncode


def test_rows_without_trained_tokens_are_dropped_with_a_reason_or_refused_when_strict(prepared, tmp_path):
    root, rec, vm, tm = prepared
    rows = make_records(6)
    rows[2]["messages"][0]["content"] = "word " * 200  # the prompt alone fills max_seq_len
    store = ArtifactStore(root)
    vm2 = make_validate(store, rows, key="w" * 32)
    mm = make_mix(store, vm2, {"one": rows, "two": rows})
    # strict: the label audit refuses to train
    strict = {**recipe_dict(tmp_path, max_steps=1), "on_error": "strict"}
    with pytest.raises(loop.LabelAuditError, match=rows[2]["record_id"]):
        loop.run(_stage_cfg(root, strict, mm, tm, "one", tmp_path / "work"))
    # lenient (the default): truncated rows that keep no assistant token are dropped, each with its reason
    out = loop.run(_stage_cfg(root, recipe_dict(tmp_path, max_steps=1), mm, tm, "one", tmp_path / "work1"))
    dropped = [json.loads(x) for x in (out / "dropped.jsonl").read_text().splitlines()]
    assert [(d["record_id"], d["reason"], d["trained_tokens"]) for d in dropped] == [
        (rows[2]["record_id"], "no_trained_tokens", 0)]
    assert dropped[0]["total_tokens"] > 96
    # with truncation: drop, every row over max_seq_len is dropped as too long
    rec_drop = recipe_dict(tmp_path, truncation="drop", max_steps=1)
    out = loop.run(_stage_cfg(root, rec_drop, mm, tm, "one", tmp_path / "work2"))
    dropped = [json.loads(x) for x in (out / "dropped.jsonl").read_text().splitlines()]
    assert [(d["record_id"], d["reason"]) for d in dropped] == [(rows[2]["record_id"], "too_long")]
    audit = pq.read_table(out / "label_audit.parquet").to_pylist()
    assert len(audit) == 6 and sum(a["dropped"] for a in audit) == 1
    assert [a["drop_reason"] for a in audit if a["dropped"]] == ["too_long"]
    assert all(a["trained_tokens"] > 0 for a in audit if not a["dropped"])


@pytest.mark.slow
def test_killed_run_resumes_with_the_same_losses_and_data_order(prepared, tmp_path):
    root, _rec, vm, tm = prepared
    rows = make_records(120)
    rec = recipe_dict(tmp_path, method="full", checkpoint_every=2, max_steps=9, batch_size=2)
    mm = make_mix(ArtifactStore(root), vm, {"one": rows, "two": rows})

    straight = loop.run(_stage_cfg(root, rec, mm, tm, "one", tmp_path / "straight"))
    expected = _log(straight)
    assert len(expected) == 9

    work = tmp_path / "killed"
    cfg = _stage_cfg(root, rec, mm, tm, "one", work)
    # killed after step 5: checkpoints 2 and 4 are complete
    assert _subprocess(cfg, tmp_path / "a.json", {loop.KILL_ENV: "5"}) == -9
    assert [p.name for p in loop.complete_checkpoints(work)] == ["step-000002", "step-000004"]
    # resumed from 4, then killed while writing checkpoint 6: it has no marker
    assert _subprocess(cfg, tmp_path / "b.json", {loop.KILL_ENV + "_IN_CHECKPOINT": "6"}) == -9
    assert [p.name for p in loop.complete_checkpoints(work)] == ["step-000002", "step-000004"]
    fake = work / "checkpoints" / "step-000008"  # a checkpoint directory without its marker is ignored
    fake.mkdir()
    (fake / "state.json").write_text(json.dumps({"step": 8, "log": []}))

    out = loop.run(cfg)
    got = _log(out)
    assert [r["step"] for r in got] == list(range(1, 10))
    assert [r["example_ids"] for r in got] == [r["example_ids"] for r in expected]
    assert [r["positions"] for r in got] == [r["positions"] for r in expected]
    for a, b in zip(got, expected):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], abs=1e-4)
    # every example of the stage seen exactly once (9 steps x 2 bins cover the 120 short rows? check no repeats)
    seen = [p for r in got for p in r["positions"]]
    assert len(seen) == len(set(seen))
    assert weights_sha256(out) == weights_sha256(straight)


@pytest.mark.slow
@pytest.mark.parametrize(
    "method,between,launcher",
    [("lora", "merge", "accelerate"), ("full", "merge", "inprocess"), ("lora", "continue", "inprocess")],
)
def test_two_stages_chain_and_publish(prepared, tmp_path, monkeypatch, method, between, launcher):
    """Stage 2 starts from stage 1's weights and records their hash; both publish loadable safetensors."""
    root, _rec, vm, tm = prepared
    if launcher == "inprocess":
        monkeypatch.setenv(launch.INPROCESS_ENV, "1")
    rows = make_records(120)
    nlp = [r for r in rows if r["source"] == "nlp"]
    rec = recipe_dict(tmp_path, method=method, between_stages=between, lr=2e-2 if method == "lora" else 1e-2,
                      max_steps=12, batch_size=2, checkpoint_every=100,
                      lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    mm = make_mix(ArtifactStore(root), vm, {"one": nlp, "two": rows})
    m1 = launch.train_stage(root, rec, mm, tm, "one", None)
    m2 = launch.train_stage(root, rec, mm, tm, "two", m1)
    store = ArtifactStore(root)
    for m, n in ((m1, len(nlp)), (m2, len(rows))):
        s = m["stats"]
        assert s["rows_in"] == n == s["rows_out"] and s["rows_rejected"] == 0
        log = store.read(m, "train_log").to_pylist()
        assert [r["step"] for r in log] == list(range(1, 13))
        losses = [r["loss"] for r in log]
        assert sum(losses[-3:]) < sum(losses[:3])  # loss goes down in each stage
        assert store.read(m, "label_audit").num_rows == n
        assert s["mixture_key"] == mm["key"] and len(s["mixture_manifest_sha256"]) == 64
        assert "mermaid" in s["report_markdown"]
        assert not (Path(root) / "train" / f".work-{m['key']}").exists()
    d1, d2 = Path(root) / m1["dir"], Path(root) / m2["dir"]
    assert m1["stats"]["init_weights_sha256"] is None
    assert m2["stats"]["init_weights_sha256"] == weights_sha256(d1) == m1["stats"]["weights_sha256"]
    assert m2["stats"]["init"] == {"step": "train", "key": m1["key"]}
    assert not any(p.suffix in (".bin", ".pt") for p in d2.iterdir())
    if method == "lora":
        assert (d2 / "adapter_model.safetensors").exists()
        expected_base = None if between == "continue" else {"step": "train", "key": m1["key"]}
        assert m2["stats"]["adapter_base"] == expected_base
    # the published stages load, and stage 2 differs from stage 1 and from the base
    base, _ = load_for_inference(root, rec, tm, None)
    s1, _ = load_for_inference(root, rec, tm, m1)
    s2, _ = load_for_inference(root, rec, tm, m2)
    w = "model.layers.0.self_attn.q_proj.weight"
    q0, q1, q2 = (dict(x.named_parameters())[w] for x in (base, s1, s2))
    assert not torch.equal(q0, q1) and not torch.equal(q1, q2)
    # re-running a published stage is a cache hit
    assert launch.train_stage(root, rec, mm, tm, "one", None)["skipped"]


def test_kill_between_stages_does_not_retrain_a_finished_stage(prepared, tmp_path, monkeypatch, capsys):
    """Stage one published; the run killed in stage two after its training finished, before its
    manifest. The rerun neither runs stage one's body nor trains stage two again."""
    from tasks import store as store_mod
    from tasks.store import file_sha256

    root, _rec, vm, tm = prepared
    monkeypatch.setenv(launch.INPROCESS_ENV, "1")
    rows = make_records(40)
    rec = recipe_dict(tmp_path, method="full", max_steps=2, batch_size=2, checkpoint_every=100)
    mm = make_mix(ArtifactStore(root), vm, {"one": rows[:20], "two": rows})
    store = ArtifactStore(root)
    m1 = launch.train_stage(root, rec, mm, tm, "one", None)
    part1 = store.paths(m1, "train_log")[0]
    published1 = (part1.stat().st_mtime_ns, file_sha256(part1))

    def kill(point):
        if point == "train:before_manifest":
            raise KeyboardInterrupt  # like a kill: nothing after this point runs

    monkeypatch.setattr(store_mod, "FAULT_HOOK", kill)
    with pytest.raises(KeyboardInterrupt):
        launch.train_stage(root, rec, mm, tm, "two", m1)
    monkeypatch.setattr(store_mod, "FAULT_HOOK", None)
    (work2,) = (Path(root) / "train").glob(".work-*")  # stage two's; stage one's went with its publish
    trained2 = _log(work2 / "final")
    weights2 = weights_sha256(work2 / "final")

    capsys.readouterr()
    again1 = launch.train_stage(root, rec, mm, tm, "one", None)
    assert again1["skipped"] and again1["key"] == m1["key"] and again1["tables"] == m1["tables"]
    assert not (Path(root) / "train" / f".work-{m1['key']}").exists()  # the body never started
    assert (part1.stat().st_mtime_ns, file_sha256(part1)) == published1  # train_log not rewritten
    m2 = launch.train_stage(root, rec, mm, tm, "two", again1)
    assert "stage two: already complete" in capsys.readouterr().out
    assert not m2["skipped"] and m2["stats"]["init"] == {"step": "train", "key": m1["key"]}
    # what is published is what the killed run trained (tokens_per_s included: no second training)
    assert store.read(m2, "train_log").to_pylist() == trained2
    assert m2["stats"]["weights_sha256"] == weights2 == weights_sha256(Path(root) / m2["dir"])
    assert not work2.exists()


def test_resume_ignores_a_checkpoint_without_its_marker(prepared, tmp_path, capsys):
    """The newest checkpoint directory lacks its COMPLETE marker (and its weights are half written):
    resume takes the newest marked one and the run ends as an uninterrupted one does."""
    root, _rec, vm, tm = prepared
    rows = make_records(40)
    rec = recipe_dict(tmp_path, method="full", max_steps=4, batch_size=2, checkpoint_every=1)
    mm = make_mix(ArtifactStore(root), vm, {"one": rows, "two": rows})
    work = tmp_path / "work"
    cfg = _stage_cfg(root, rec, mm, tm, "one", work)
    out = loop.run(cfg)
    expected = _log(out)
    assert [p.name for p in loop.complete_checkpoints(work)] == ["step-000002", "step-000003"]

    shutil.rmtree(out)  # as if killed before the stage's output was saved
    newest = work / "checkpoints" / "step-000003"
    (newest / loop.COMPLETE).unlink()
    weights = newest / "trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert [p.name for p in loop.complete_checkpoints(work)] == ["step-000002"]
    capsys.readouterr()
    out = loop.run(cfg)
    assert "resumed from step-000002: step 2" in capsys.readouterr().out
    got = _log(out)
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    assert [r["example_ids"] for r in got] == [r["example_ids"] for r in expected]
    for a, b in zip(got, expected):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
