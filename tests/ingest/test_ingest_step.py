"""The ingest step: strict vs lenient on bad input, reject shares, counts, caching."""
import json

import pyarrow.parquet as pq
import pytest

from tasks.errors import InputError, TooManyRejects
from tasks.ingest.run import ingest_file
from tasks.recipe import parse_recipe

GOOD = {"instruction": "Q", "context": "", "response": "A", "category": "c"}


def _recipe(tmp_path, path, **kw):
    return parse_recipe({"sources": [{"name": "d", "format": "dolly", "path": str(path)}], **kw},
                        tmp_path).model_dump(by_alias=True)


def _bad_file(tmp_path):
    p = tmp_path / "d.jsonl"
    lines = [b"\xef\xbb\xbf" + json.dumps(GOOD).encode()] + [json.dumps({**GOOD, "instruction": f"Q{i}"}).encode()
                                                              for i in range(8)]
    lines.insert(3, b'{"instruction": "broken",')
    lines.insert(6, b'{"instruction": "caf\xe9", "context": "", "response": "x", "category": "c"}')
    p.write_bytes(b"\r\n".join(lines) + b"\r\n")
    return p


def test_lenient_rejects_with_where_and_prefix(tmp_path, store):
    p = _bad_file(tmp_path)
    m = ingest_file(str(store.root), _recipe(tmp_path, p), "d", str(p))
    assert m["stats"]["rows_in"] == 11 and m["stats"]["rows_out"] == 9 and m["stats"]["rows_rejected"] == 2
    raw = store.read(m, "records_raw").to_pylist()
    assert [r["origin_row"] for r in raw] == [1, 2, 3, 5, 6, 8, 9, 10, 11]
    assert json.loads(raw[0]["raw"]) == GOOD  # the BOM is gone, CRLF accepted
    rej = store.read(m, "rejects").to_pylist()
    assert [(r["step"], r["reason"], r["origin_row"]) for r in rej] == [("ingest", "bad_json", 4),
                                                                         ("ingest", "invalid_utf8", 7)]
    assert all(r["origin_file"] == str(p) and r["source"] == "d" for r in rej)
    assert rej[0]["raw_prefix"] == '{"instruction": "broken",'
    assert rej[1]["raw_prefix"].startswith('{"instruction": "caf')


def test_strict_names_file_and_line_and_publishes_nothing(tmp_path, store):
    p = _bad_file(tmp_path)
    with pytest.raises(InputError) as e:
        ingest_file(str(store.root), _recipe(tmp_path, p, on_error="strict"), "d", str(p))
    assert (e.value.file, e.value.row, e.value.reason) == (str(p), 4, "bad_json")
    assert f"{p}:4: bad_json" in str(e.value)
    assert not list((store.root / "ingest").glob("*/manifest.json"))
    assert not list((store.root / "ingest").glob(".staging-*"))


def test_reject_share_fails_step(tmp_path, store):
    p = _bad_file(tmp_path)
    with pytest.raises(TooManyRejects):
        ingest_file(str(store.root), _recipe(tmp_path, p, max_reject_share=0.1), "d", str(p))
    assert not list((store.root / "ingest").glob("*/manifest.json"))


def test_rerun_is_skipped_and_content_keyed(tmp_path, store):
    p = _bad_file(tmp_path)
    rd = _recipe(tmp_path, p)
    a = ingest_file(str(store.root), rd, "d", str(p))
    b = ingest_file(str(store.root), rd, "d", str(p))
    assert not a["skipped"] and b["skipped"] and a["key"] == b["key"]
    p.write_bytes(p.read_bytes() + json.dumps(GOOD).encode() + b"\n")
    c = ingest_file(str(store.root), rd, "d", str(p))
    assert c["key"] != a["key"] and c["stats"]["rows_in"] == 12
    assert pq.read_table(store.paths(c, "records_raw")[0]).num_rows == 10


def test_empty_file(tmp_path, store):
    p = tmp_path / "e.jsonl"
    p.write_bytes(b"")
    m = ingest_file(str(store.root), _recipe(tmp_path, p), "d", str(p))
    assert m["stats"]["rows_in"] == 0 and store.read(m, "records_raw").num_rows == 0
