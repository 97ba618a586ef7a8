"""The DuckDB catalog: views over latest manifests, atomic rebuild, read-only sandboxed queries."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

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
    catalog.publish_step(store, RunLog(store, run_id, "r.yaml"), step, [m], [{"step": step, "rows_out": n}])
    return m


def test_views_follow_latest(store):
    _publish(store, 3)
    assert catalog.query(store.root, "select count(*) as n from things", "json") == json.dumps([{"n": 3}], indent=1)
    _publish(store, 5, run_id="r2")
    assert "5" in catalog.query(store.root, "select count(*) from things", "csv")


def test_reader_holding_old_catalog_is_not_broken(store):
    _publish(store, 3)
    con = catalog.connect(store.root)
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
        catalog.publish_step(store, RunLog(store, run_id, "r.yaml"), "evaluate", [m],
                           [{"step": "evaluate", "dir": m["dir"], "finished_at": at}])
    assert catalog.query(store.root, "select run_id, stage, value from eval", "json") == json.dumps(
        [{"run_id": "r2", "stage": "base", "value": 1.5}], indent=1)


# -- a catalog any DuckDB opens, wherever the directory goes ---------------------------------------
DUCKDB_CLI = Path(sys.executable).with_name("duckdb")  # the PyPI `duckdb-cli` (dev dependency)
RECORDS = pa.schema([("record_id", pa.string()), ("source", pa.string())])


def _publish_convert(store, shards: list[list[str]]):
    """A convert step of several shards whose `records` hold the given record ids."""
    manifests = []
    for i, ids in enumerate(shards):
        def body(w, ids=ids):
            w.write("records", RECORDS, [{"record_id": r, "source": "s"} for r in ids])
            w.stats.update(rows_in=len(ids), rows_out=len(ids))

        manifests.append(run_step(store, "convert", 1, [i, ids], {}, f"s#{i:03d}:f{i}.jsonl", body))
    catalog.publish_step(store, RunLog(store, "r1", "r.yaml"), "convert", manifests, [{"step": "convert"}])


def _cli(db: Path, sql: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(DUCKDB_CLI), "-csv", "-noheader", str(db), "-c", sql], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def test_duckdb_cli_1_5_opens_a_copied_catalog(store, tmp_path):
    _publish(store, 3)
    version = subprocess.run([str(DUCKDB_CLI), "--version"], capture_output=True, text=True).stdout
    assert version.startswith("v1."), version  # an older DuckDB than the one that wrote it (2.x)
    copy = tmp_path / "moved"
    shutil.copytree(store.root, copy)
    shutil.rmtree(store.root)  # nothing may still point at the old directory
    res = _cli(copy / catalog.CATALOG, "select count(*) from things", cwd=copy)
    assert (res.returncode, res.stdout.strip()) == (0, "3"), res.stderr
    elsewhere = _cli(copy / catalog.CATALOG, f"SET file_search_path = '{copy}'; select count(*) from runs",
                     cwd=tmp_path)
    assert (elsewhere.returncode, elsewhere.stdout.strip()) == (0, "1"), elsewhere.stderr
    assert catalog.query(copy, "select count(*) from things", "csv").splitlines() == ["count_star()", "3"]


def test_catalog_says_how_it_is_stored_and_opened(store):
    _publish(store, 1)
    info = json.loads(catalog.query(store.root, "select * from tuneline_catalog", "json"))[0]
    assert info["format"] == catalog.FORMAT and info["storage_version"] == catalog.STORAGE_VERSION
    assert "file_search_path" in info["how_to_open"]


def test_query_rebuilds_a_catalog_of_an_older_format(store, tmp_path):
    _publish(store, 2)
    gone = tmp_path / "old-root" / "things.parquet"  # where an older catalog's absolute paths point
    gone.parent.mkdir()
    old = duckdb.connect(str(store.root / catalog.CATALOG))
    old.execute("DROP VIEW tuneline_catalog")
    old.execute(f"COPY (SELECT 1 AS x) TO '{gone}'")
    old.execute(f"CREATE OR REPLACE VIEW things AS SELECT * FROM read_parquet('{gone}')")
    old.close()
    gone.unlink()
    assert catalog.catalog_format(store.root / catalog.CATALOG) is None
    assert catalog.query(store.root, "select count(*) from things", "csv").splitlines()[1] == "2"
    assert catalog.catalog_format(store.root / catalog.CATALOG) == catalog.FORMAT


def test_records_have_a_unique_row_key_next_to_the_content_key(store):
    _publish_convert(store, [["a", "b", "a"], ["c", "a"]])  # exact copies share record_id "a"
    rows = json.loads(catalog.query(
        store.root, "select row_key, shard, row, record_id from records order by shard, row", "json"))
    assert [r["row_key"] for r in rows] == ["s#000:f0.jsonl:0", "s#000:f0.jsonl:1", "s#000:f0.jsonl:2",
                                            "s#001:f1.jsonl:0", "s#001:f1.jsonl:1"]
    assert [(r["shard"], r["row"], r["record_id"]) for r in rows] == [
        (0, 0, "a"), (0, 1, "b"), (0, 2, "a"), (1, 0, "c"), (1, 1, "a")]
    plain = catalog.connect(store.root)  # through file_search_path, from another directory
    assert plain.execute("select count(distinct row_key), count(*) from records").fetchone() == (5, 5)


def test_sql_errors_are_duckdbs_own_message(store):
    _publish(store, 1)
    with pytest.raises(TunelineError) as exc:
        catalog.query(store.root, "select nope from things")
    assert 'Referenced column "nope" not found' in str(exc.value)
    assert "read-only" not in str(exc.value)
    with pytest.raises(TunelineError, match="syntax error"):
        catalog.query(store.root, "selec 1")
