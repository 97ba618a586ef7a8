"""Progress: done of total, rate and ETA; a rich bar on a terminal, log lines elsewhere."""
from __future__ import annotations

import io
import logging
import os
import re

import pytest
from rich.console import Console

from tasks.progress import FileProgress, Progress, on_terminal


def test_log_lines_have_total_rate_and_eta():
    lines = []
    p = Progress("mix: reading the pool", total=12_000, every_s=0, emit=lines.append, bar=False)
    p.add(3_000)
    p.done()
    assert re.fullmatch(r"mix: reading the pool: 3,000/12,000 rows \(25%\), [\d,.]+ rows/s, ETA \d+:\d\d:\d\d",
                        lines[0]), lines
    assert lines[-1].startswith("mix: reading the pool: 3,000/12,000 rows (25%)")


def test_without_total_rows_and_rate_only_and_lines_are_throttled():
    lines = []
    p = Progress("validate", every_s=3600, emit=lines.append, bar=False)
    for _ in range(100):
        p.add(10)
    assert lines == []  # nothing before every_s has passed
    p.done()
    assert re.fullmatch(r"validate: 1,000 rows, [\d,.]+ rows/s", lines[0])


def test_training_steps_rate_and_eta_from_the_clock(monkeypatch):
    clock = iter([100.0, 106.0])  # created at 100 s, 12 steps done at 106 s: 2 steps/s, 58 left
    monkeypatch.setattr("tasks.progress.time.perf_counter", lambda: next(clock))
    lines = []
    p = Progress("training", total=70, unit="steps", every_s=0, emit=lines.append, bar=False)
    p.update(12)
    assert lines == ["training: 12/70 steps (17%), 2.00 steps/s, ETA 0:00:29"]


def test_terminal_bars_share_one_display_and_log_the_end():
    out, lines = io.StringIO(), []
    console = Console(file=out, force_terminal=True, width=120)
    a = Progress("convert a", total=100, emit=lines.append, bar=True, console=console)
    b = Progress("convert b", total=50, emit=lines.append, bar=True, console=console)
    a.add(40)
    b.add(50)
    a.done()
    b.done()
    assert lines[0].startswith("convert a: 40/100 rows (40%)") and lines[1].startswith("convert b: 50/50 rows (100%)")
    assert "convert a" in out.getvalue() and "ETA" in out.getvalue()


def test_no_bars_when_not_a_terminal(monkeypatch):
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert not on_terminal()


# -- the figures each long data step logs: done of a known total, rate, ETA, and 100% at the end --
def _step_lines(caplog, step: str) -> list[str]:
    """The progress lines ('<step ...>: done/total unit ...') the step logged."""
    return [r.getMessage() for r in caplog.records
            if r.name == "tuneline" and re.match(rf"{step}.*: [\d,]+/[\d,]+ ", r.getMessage())]


def _dolly(tmp_path, n: int, suffix: str = ".jsonl"):
    import gzip
    import json

    rows = [{"instruction": f"Question number {i} about rivers?", "context": "", "response": f"Answer {i}.",
             "category": "open_qa"} for i in range(n)]
    path = tmp_path / f"d{suffix}"
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=100)
        return path
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    path.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
    return path


@pytest.fixture
def tuneline_info(caplog):
    caplog.set_level(logging.INFO, logger="tuneline")
    return caplog


@pytest.mark.parametrize("suffix, unit", [(".jsonl", "kB"), (".jsonl.gz", "kB"), (".parquet", "rows")])
def test_ingest_and_convert_log_totals_known_up_front_and_end_at_100(tmp_path, store, tuneline_info, suffix, unit):
    from tasks.convert import convert_shard
    from tasks.ingest.run import ingest_file
    from tasks.recipe import parse_recipe

    path = _dolly(tmp_path, 1500, suffix)
    recipe = parse_recipe({"sources": [{"name": "d", "format": "dolly", "path": str(path)}]}, tmp_path)
    ingested = ingest_file(str(store.root), recipe.model_dump(by_alias=True), "d", str(path))
    convert_shard(str(store.root), recipe.model_dump(by_alias=True), ingested)
    [ingest] = _step_lines(tuneline_info, "ingest ")
    size = -(-path.stat().st_size // 1000)  # the file's size in kB: the total of a file read in order
    total = f"{size:,}/{size:,} kB" if unit == "kB" else "1,500/1,500 rows"
    assert re.fullmatch(rf"ingest d:{path.name}: {total} \(100%\), [\d,.]+ {unit}/s, ETA 0:00:00"
                        + (", 1,500 rows" if unit == "kB" else ""), ingest), ingest
    [convert] = _step_lines(tuneline_info, "convert ")
    assert re.fullmatch(r"convert d:d\.\S+: 1,500/1,500 rows \(100%\), [\d,.]+ rows/s, ETA 0:00:00", convert), convert


def test_file_progress_follows_the_read_offset_of_the_file(tmp_path):
    """Done is how far the file's open descriptor has read (the compressed file's, for .gz), not
    a row count; with no descriptor to see, the rows' text, held below the total until done()."""
    import gzip

    lines = []
    for suffix in (".jsonl", ".jsonl.gz"):
        path = _dolly(tmp_path, 20_000, suffix)
        p = FileProgress("ingest d", str(path), emit=lines.append, bar=False, every_s=0)
        with (gzip.open if suffix.endswith(".gz") else open)(path, "rb") as fh:
            for i, line in enumerate(fh):
                p.row(len(line) - 1)
                if i == 10_000:
                    break
            offset = os.lseek(fh.fileno(), 0, os.SEEK_CUR) // 1000  # read ahead of the rows, as Progress sees it
            assert 0 < p.count <= offset < p.total
            assert offset - p.count <= 16  # the last poll lags at most POLL_ROWS rows (about 15 kB here)
    path = _dolly(tmp_path, 2_000)
    p = FileProgress("ingest d", str(path), emit=lines.append, bar=False, every_s=0)
    p.row(10 * path.stat().st_size)  # no descriptor open: text length, capped below the total
    for _ in range(p.POLL_ROWS - 1):
        p.row(0)
    assert p.count == p.total - 1
    p.done()
    assert lines[-1].startswith(f"ingest d: {p.total}/{p.total} kB (100%)")


def test_validate_and_tokenizer_log_rows_of_their_input_tables(tmp_path, store, tuneline_info):
    from test_validate import good_rows, recipe, split_manifest

    from tasks.schema import RECORDS
    from tasks.tokens.tokenizer import build_tokenizer
    from tasks.validate import validate

    validated = validate(str(store.root), recipe(tmp_path), split_manifest(store, good_rows(300)))
    [line] = _step_lines(tuneline_info, "validate")
    assert re.fullmatch(r"validate: 300/300 rows \(100%\), [\d,.]+ rows/s, ETA 0:00:00", line), line

    w = store.begin("validate", "v", label="v")
    w.write("records_valid", RECORDS, store.read(validated, "records_valid"))
    build_tokenizer(str(store.root), {"sources": [{"name": "src", "format": "dolly", "path": "x"}],
                                      "base_dir": str(tmp_path), "train": {"vocab_size": 300}}, w.commit())
    [line] = _step_lines(tuneline_info, "tokenizer")
    assert re.fullmatch(r"tokenizer: reading texts: 300/300 rows \(100%\), [\d,.]+ rows/s, ETA 0:00:00", line), line
