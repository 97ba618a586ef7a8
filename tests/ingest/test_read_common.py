"""Shared reading helpers: compression, BOM, CRLF, invalid UTF-8, JSON documents, CSV, Parquet, DuckDB."""
import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from tasks.ingest.common import (
    data_stem,
    iter_csv,
    iter_duckdb,
    iter_json_document,
    iter_jsonl,
    iter_parquet,
    iter_records,
    split_options,
)

ROWS = [{"a": "x", "n": 1}, {"a": "ü中", "n": 2}]


def _jsonl_bytes(rows, nl=b"\n"):
    return nl.join(json.dumps(r, ensure_ascii=False).encode() for r in rows) + nl


@pytest.mark.parametrize("suffix", ["", ".gz", ".zst"])
def test_jsonl_compressed_bom_crlf(tmp_path, suffix):
    data = b"\xef\xbb\xbf" + _jsonl_bytes(ROWS, b"\r\n")
    if suffix == ".gz":
        data = gzip.compress(data)
    elif suffix == ".zst":
        data = zstandard.ZstdCompressor().compress(data)
    p = tmp_path / f"rows.jsonl{suffix}"
    p.write_bytes(data)
    items = list(iter_records(str(p)))
    assert [(i[0], i[1], i[2]) for i in items] == [("row", 1, ROWS[0]), ("row", 2, ROWS[1])]


def test_jsonl_bad_lines_are_rejects_with_line_numbers(tmp_path):
    p = tmp_path / "rows.jsonl"
    p.write_bytes(b'{"a": "x"}\n\n{"a": \n{"a": "caf\xe9"}\n[1, 2]\n{"a": "ok"}\n')
    items = list(iter_jsonl(str(p)))
    assert [(i[0], i[1]) for i in items] == [("row", 1), ("reject", 3), ("reject", 4), ("reject", 5), ("row", 6)]
    assert [i[2] for i in items if i[0] == "reject"] == ["bad_json", "invalid_utf8", "wrong_type"]
    assert f"{p}:3" in items[1][3]
    assert "0xe9" in items[2][3]


def test_json_array_single_object_and_broken_document(tmp_path):
    arr = tmp_path / "a.json"
    arr.write_text(json.dumps([ROWS[0], 5, ROWS[1]]))
    items = list(iter_json_document(str(arr)))
    assert [(i[0], i[1]) for i in items] == [("row", 1), ("reject", 2), ("row", 3)]
    one = tmp_path / "o.json"
    one.write_text(json.dumps(ROWS[0], indent=2))
    assert [(i[0], i[1], i[2]) for i in iter_json_document(str(one))] == [("row", 1, ROWS[0])]
    bad = tmp_path / "b.json"
    bad.write_text('[\n {"a": 1},\n {"a": 2,,}\n]')
    (item,) = list(iter_json_document(str(bad)))
    assert item[:3] == ("reject", 3, "bad_json")
    assert str(bad) in item[3] and "line 3" in item[3] and "column" in item[3]


def test_json_document_invalid_utf8_is_one_reject(tmp_path):
    p = tmp_path / "u.json"
    p.write_bytes(b'[{"a": "x"},\n{"a": "\xff"}]')
    (item,) = list(iter_json_document(str(p)))
    assert item[:3] == ("reject", 2, "invalid_utf8")


def test_csv_rows_and_invalid_utf8(tmp_path):
    p = tmp_path / "r.csv"
    p.write_bytes(b'\xef\xbb\xbftext,label\r\n"two\nlines",1\r\nbad \xff,0\r\nshort\r\n')
    items = list(iter_csv(str(p)))
    assert items[0][:3] == ("row", 1, {"text": "two\nlines", "label": "1"})
    assert [i[2] for i in items[1:]] == ["invalid_utf8", "wrong_field_count"]


def test_parquet_and_duckdb_read_the_same_rows(tmp_path):
    p = tmp_path / "r.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), p)
    assert [i[2] for i in iter_parquet(str(p))] == ROWS
    # the code path hf:// URIs take, on a local file
    assert [i[2] for i in iter_duckdb(str(p))] == ROWS
    j = tmp_path / "r.jsonl"
    j.write_bytes(_jsonl_bytes(ROWS))
    assert [i[2] for i in iter_records(str(j), layout="duckdb")] == ROWS


def test_split_options_and_stem():
    assert split_options("Pick one.\nOptions:\n- a\n- b") == ("Pick one.", ["a", "b"])
    assert split_options("Q?\nOPTIONS:\n- yes\n- no\nAnswer:") == ("Q?\nAnswer:", ["yes", "no"])
    assert split_options("no block") == ("no block", [])
    assert data_stem("/x/cot_gsm8k_train.tsv.gz") == "cot_gsm8k_train"


def test_duckdb_lines_match_local_lines(tmp_path):
    """The hf:// line path (DuckDB) reads a TSV like the local path does."""
    from tasks.ingest.common import iter_duckdb_lines, iter_lines

    p = tmp_path / "cot_x_train.tsv"
    p.write_bytes(b'q "1",\ta\tr\\nmore\nonly\ttwo\n\nq3\ta3\tr3\n')
    assert [x for x in iter_duckdb_lines(str(p)) if x[1]] == [x for x in iter_lines(str(p)) if x[1]]


def test_unknown_options_fail_at_recipe_time(tmp_path):
    from tasks.errors import RecipeError
    from tasks.recipe import parse_recipe

    p = tmp_path / "d.jsonl"
    p.write_text("{}\n")
    with pytest.raises(RecipeError, match="unknown options"):
        parse_recipe({"sources": [{"name": "d", "format": "dolly", "path": str(p), "options": {"bogus": 1}}]}, tmp_path)
    with pytest.raises(RecipeError, match="layout"):
        parse_recipe({"sources": [{"name": "d", "format": "sharegpt", "path": str(p), "options": {"layout": "xml"}}]},
                     tmp_path)
