"""The DuckDB catalog: views over latest manifests, atomic rebuild, read-only sandboxed queries."""
from __future__ import annotations

import json

import duckdb
import pyarrow as pa
import pytest

from tasks import catalog
from tasks.errors import TunelineError
from tasks.step import run_step
from tasks.store import RunLog

SCHEMA = pa.schema([("x", pa.int64())])


def _publish(store, n, run_id="r1", step="s"):
    def body(w):
        w.write("things", SCHEMA, [{"x": i} for i in range(n)])
        w.stats.update(rows_in=n, rows_out=n)

    m = run_step(store, step, 1, [n], {}, f"n={n}", body)
    store.publish_step(RunLog(store, run_id, "r.yaml"), step, [m], [{"step": step, "rows_out": n}])
    return m


def test_views_follow_latest(store):
    _publish(store, 3)
    assert catalog.query(store.root, "select count(*) as n from things", "json") == json.dumps([{"n": 3}], indent=1)
    _publish(store, 5, run_id="r2")
    assert "5" in catalog.query(store.root, "select count(*) from things", "csv")


def test_reader_holding_old_catalog_is_not_broken(store):
    _publish(store, 3)
    con = duckdb.connect(str(store.root / "catalog.duckdb"), read_only=True)
    _publish(store, 7, run_id="r2")  # rebuild while the reader is open
    assert con.execute("select count(*) from things").fetchone() == (3,)  # its consistent snapshot
    con.close()
    assert "7" in catalog.query(store.root, "select count(*) from things", "csv")


@pytest.mark.parametrize(
    "sql, words",
    [
        ("create table t as select 1", "CREATE"),
        ("insert into things values (1)", "INSERT"),
        ("attach '/tmp/other.db' as o", "ATTACH"),
        ("copy (select 1) to 'x.csv'", "COPY"),
        ("select * from read_csv('/etc/passwd')", "/etc/passwd"),
        ("set enable_external_access = true", "SET"),
        ("select 1; select 2", "exactly one"),
        ("install httpfs", "LOAD"),
    ],
)
def test_query_refuses_writes_and_outside_files(store, sql, words):
    _publish(store, 1)
    with pytest.raises(TunelineError) as exc:
        catalog.query(store.root, sql)
    assert words in str(exc.value)


def test_query_reads_inside_root(store):
    _publish(store, 2)
    out = catalog.query(store.root, f"select count(*) as n from read_parquet('{store.root}/s/*/*.parquet')", "csv")
    assert out.splitlines() == ["n", "2"]


def test_missing_catalog_is_a_clear_error(tmp_path):
    with pytest.raises(TunelineError, match="no catalog"):
        catalog.query(tmp_path, "select 1")


def test_table_rendering():
    text = catalog.render_table(["a", "b"], [(1, None), (2.5, "x\ny")])
    assert "NULL" in text and "x\\ny" in text and text.endswith("(2 rows)")


def test_eval_view_names_the_run_that_published_it(store):
    # An evaluate artifact is content-keyed and reused across runs; its run_id comes from `runs`.
    schema = pa.schema([("run_id", pa.string()), ("stage", pa.string()), ("metric", pa.string()),
                        ("value", pa.float64())])

    def body(w):
        w.write("eval", schema, [{"run_id": None, "stage": "base", "metric": "loss", "value": 1.5}])
        w.stats.update(rows_in=1, rows_out=1)

    m = run_step(store, "evaluate", 1, [], {}, "base", body)
    for run_id, at in (("r1", "2026-01-01T00:00:00Z"), ("r2", "2026-01-02T00:00:00Z")):
        store.publish_step(RunLog(store, run_id, "r.yaml"), "evaluate", [m],
                           [{"step": "evaluate", "dir": m["dir"], "finished_at": at}])
    assert catalog.query(store.root, "select run_id, stage, value from eval", "json") == json.dumps(
        [{"run_id": "r2", "stage": "base", "value": 1.5}], indent=1)
