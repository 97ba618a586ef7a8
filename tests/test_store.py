"""The artifact store: content keys, atomic publish, verification, staging clean-up."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks import store as store_mod
from tasks.errors import TooManyRejects, TunelineError
from tasks.step import run_step
from tasks.store import ArtifactStore, RunLog, safe_name, step_key

SCHEMA = pa.schema([("x", pa.int64())])


def _body(rows, rejected=0):
    def body(w):
        w.write("things", SCHEMA, [{"x": i} for i in range(rows)])
        w.stats.update(rows_in=rows + rejected, rows_out=rows, rows_rejected=rejected)

    return body


def test_key_is_content_not_run(store):
    a = step_key("s", 1, ["in"], {"c": 1})
    assert a == step_key("s", 1, ["in"], {"c": 1})
    assert a != step_key("s", 2, ["in"], {"c": 1})
    assert a != step_key("s", 1, ["in2"], {"c": 1})
    assert a != step_key("s", 1, ["in"], {"c": 2})


def test_second_run_skips_and_files_are_identical(store):
    calls = []

    def body(w):
        calls.append(1)
        _body(3)(w)

    m1 = run_step(store, "s", 1, ["i"], {}, "lbl", body)
    m2 = run_step(store, "s", 1, ["i"], {}, "lbl", body)
    assert calls == [1] and not m1["skipped"] and m2["skipped"]
    assert m1["tables"] == m2["tables"]
    assert pq.read_table(store.paths(m2, "things")[0]).num_rows == 3


def test_corrupt_part_is_not_trusted(store):
    m = run_step(store, "s", 1, [], {}, "l", _body(5))
    part = store.paths(m, "things")[0]
    part.write_bytes(part.read_bytes()[:-10])
    assert store.load("s", m["key"]) is None
    again = run_step(store, "s", 1, [], {}, "l", _body(5))
    assert not again["skipped"] and store.load("s", m["key"]) is not None
    assert len(list((store.root / "s").glob(".invalid-*"))) == 1


def test_failure_publishes_nothing(store):
    def body(w):
        w.write("things", SCHEMA, [{"x": 1}])
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        run_step(store, "s", 1, [], {}, "l", body)
    assert not any((store.root / "s").iterdir())


def test_crash_before_rename_leaves_previous_version(store, monkeypatch):
    path = store.root / "f.json"
    store_mod.atomic_write_json(path, {"v": 1})

    def hook(point):
        if point == "before_rename":
            raise OSError("disk full")

    monkeypatch.setattr(store_mod, "FAULT_HOOK", hook)
    with pytest.raises(OSError):
        store_mod.atomic_write_json(path, {"v": 2})
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in store.root.iterdir()] == ["f.json"]


def test_crash_before_manifest_leaves_only_staging(store, monkeypatch):
    def hook(point):
        if point == "s:before_manifest":
            raise KeyboardInterrupt  # like a kill: nothing after this runs

    monkeypatch.setattr(store_mod, "FAULT_HOOK", hook)
    with pytest.raises(KeyboardInterrupt):
        run_step(store, "s", 1, [], {}, "l", _body(2))
    assert [p for p in (store.root / "s").iterdir() if not p.name.startswith(".staging-")] == []


def test_stale_staging_is_cleaned(store):
    import os

    from tasks.store import HOST_TAG

    dead = store.root / "s" / f".staging-abc-{HOST_TAG}-999999999-ffff"
    live = store.root / "s" / f".staging-abd-{HOST_TAG}-{os.getpid()}-ffff"
    other_host = store.root / "s" / ".staging-abe-0badc0de-999999999-ffff"
    for d in (dead, live, other_host):
        d.mkdir(parents=True)
    assert store.clean_staging() == 1 and not dead.exists() and live.exists() and other_host.exists()
    assert store.clean_staging(other_hosts_after_s=0) == 1 and not other_host.exists() and live.exists()


def test_rows_must_add_up(store):
    def body(w):
        w.stats.update(rows_in=3, rows_out=1, rows_rejected=1)

    with pytest.raises(AssertionError, match="rows in 3"):
        run_step(store, "s", 1, [], {}, "l", body)


def test_reject_share_bound(store):
    with pytest.raises(TooManyRejects, match="rejected 5 of 6"):
        run_step(store, "s", 1, [], {}, "l", _body(1, rejected=5), max_reject_share=0.5)


def test_empty_table_has_a_typed_part(store):
    m = run_step(store, "s", 1, [], {}, "l", _body(0))
    t = pq.read_table(store.paths(m, "things")[0])
    assert t.num_rows == 0 and t.schema.names == ["x"]


def test_parts_roll_over(store):
    w = store.begin("s", "k")
    w.table("t", SCHEMA, part_rows=4).write([{"x": i} for i in range(10)])
    m = w.commit()
    assert [p["rows"] for p in m["tables"]["t"]] == [4, 4, 2]


def test_identical_concurrent_publish_keeps_first(store):
    a, b = store.begin("s", "k"), store.begin("s", "k")
    a.write("t", SCHEMA, [{"x": 1}])
    b.write("t", SCHEMA, [{"x": 1}])
    ma, mb = a.commit(), b.commit()
    assert ma["tables"] == mb["tables"]
    assert [p.name for p in (store.root / "s").iterdir()] == ["k"]


@pytest.mark.parametrize("bad", ["..", "../x", "/etc", "a/b", "a\x00b", "", ".hidden", "x" * 200])
def test_unsafe_names_refused(bad):
    with pytest.raises(TunelineError):
        safe_name(bad)


def test_symlinked_step_dir_escaping_root_is_not_followed(store, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (store.root / "evil").symlink_to(outside)
    m = run_step(store, "good", 1, [], {}, "l", _body(1))
    assert store.load("good", m["key"]) is not None
    with pytest.raises(TunelineError):
        store.begin("evil", "k")


def test_publish_updates_latest_runs_and_catalog(store):
    import duckdb

    m = run_step(store, "s", 1, [], {}, "l", _body(4))
    run = RunLog(store, "run-1", "r.yaml")
    store.publish_step(run, "s", [m], [{"step": "s", "rows_out": 4}])
    con = duckdb.connect(str(store.root / "catalog.duckdb"), read_only=True)
    assert con.execute("select count(*) from things").fetchone() == (4,)
    assert con.execute("select run_id, step from runs").fetchall() == [("run-1", "s")]
