"""The pipeline flow end to end on demo data, under a real Prefect test server."""
from __future__ import annotations


import pytest

from tasks import catalog
from tasks.store import ArtifactStore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prepared_twice(prefect_server, demo_recipe, tmp_path_factory):
    from flows.pipeline import pipeline

    out = tmp_path_factory.mktemp("out")
    first = pipeline(str(demo_recipe), str(out), until="mix")
    second = pipeline(str(demo_recipe), str(out), until="mix")
    return out, first, second


def _runs(out, run_id):
    con = catalog.connect(out)
    try:
        return con.execute(
            "select step, label, key, skipped, rows_in, rows_out, rows_rejected from runs where run_id = ? "
            "order by step, label", [run_id]).fetchall()
    finally:
        con.close()


def test_every_step_accounts_for_every_row(prepared_twice):
    out, first, _ = prepared_twice
    rows = _runs(out, first["run_id"])
    assert {r[0] for r in rows} >= {"ingest", "convert", "dedup", "split", "validate", "mix"}
    for step, label, _, _, rows_in, rows_out, rejected in rows:
        assert rows_in == rows_out + rejected, (step, label)
    con = catalog.connect(out)
    n_raw = con.execute("select count(*) from records_raw").fetchone()[0]
    n_ingest_rejects = con.execute("select count(*) from rejects where step = 'ingest'").fetchone()[0]
    ingest_in = sum(r[4] for r in rows if r[0] == "ingest")
    assert n_raw + n_ingest_rejects == ingest_in
    for view in ["records_raw", "records", "rejects", "dedup_clusters", "mixture", "runs"]:
        assert con.execute(f"select count(*) from {view}").fetchone()[0] > 0, view
    con.close()


def test_second_run_skips_every_step_with_identical_outputs(prepared_twice):
    out, first, second = prepared_twice
    a, b = _runs(out, first["run_id"]), _runs(out, second["run_id"])
    assert [r[:3] for r in a] == [r[:3] for r in b]  # same steps, same content keys
    assert all(r[3] for r in b), [r for r in b if not r[3]]
    store = ArtifactStore(out)
    for step, _, key, *_ in b:
        assert store.load(step, key) is not None
