"""The artifact store: content keys, atomic publish, verification, staging clean-up."""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks import catalog
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


def test_staging_of_a_killed_but_unreaped_process_is_cleaned(store):
    # A SIGKILLed run's processes can linger as zombies (their parent died too): not alive.
    import subprocess
    import sys
    import time

    from tasks.store import HOST_TAG

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while "Z" not in open(f"/proc/{child.pid}/stat").read().rsplit(")", 1)[-1].split()[:1] and time.monotonic() < deadline:
        time.sleep(0.05)
    d = store.root / "s" / f".staging-abc-{HOST_TAG}-{child.pid}-ffff"
    d.mkdir(parents=True)
    try:
        assert store.clean_staging() == 1 and not d.exists()
    finally:
        child.wait()


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
    m = run_step(store, "s", 1, [], {}, "l", _body(4))
    run = RunLog(store, "run-1", "r.yaml")
    catalog.publish_step(store, run, "s", [m], [{"step": "s", "rows_out": 4}])
    con = catalog.connect(store.root)
    assert con.execute("select count(*) from things").fetchone() == (4,)
    assert con.execute("select run_id, step from runs").fetchall() == [("run-1", "s")]


# -- a full disk during a step ----------------------------------------------------------------
_RealParquetWriter = pq.ParquetWriter


class _Disk:
    """A filesystem with `free` bytes left (None: no limit). A write past it stores what still fits
    and fails with ENOSPC, as a full disk does. `files` lists [name, bytes written] in write order."""

    def __init__(self):
        self.free = None
        self.files = []

    def open(self, path, mode="r", *args, **kw):
        fh = open(path, mode, *args, **kw)
        return _DiskFile(self, fh, Path(path).name) if any(c in mode for c in "wa+") else fh


class _DiskFile:
    def __init__(self, disk, fh, name):
        self._disk, self._fh = disk, fh
        self._entry = [name, 0]
        disk.files.append(self._entry)

    def write(self, data):
        data = bytes(data)
        free = self._disk.free
        n = len(data) if free is None else min(len(data), free)
        self._fh.write(data[:n])
        self._entry[1] += n
        if free is not None:
            self._disk.free -= n
        if n < len(data):
            self._fh.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._fh.name)
        return len(data)

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()


@pytest.fixture
def disk(monkeypatch):
    """Every file the store writes (Parquet parts, attached files, manifests) goes through one `_Disk`."""
    d = _Disk()

    class DiskParquetWriter(_RealParquetWriter):
        def __init__(self, where, schema, **kw):
            fh = d.open(where, "wb")
            super().__init__(fh, schema, **kw)
            self.file_handle = fh  # owned and closed by the writer, as when pyarrow opens a path itself

    monkeypatch.setattr(store_mod, "open", d.open, raising=False)
    monkeypatch.setattr(store_mod.pq, "ParquetWriter", DiskParquetWriter)
    return d


def _three_parts(w):
    t = w.table("things", SCHEMA, part_rows=1000)
    for start in range(0, 3000, 500):  # two writes (two row groups) per part
        t.write([{"x": (i * 2654435761) % 2**61} for i in range(start, start + 500)])
    w.attach_file("report.md", b"# report\n" * 50)
    w.stats.update(rows_in=3000, rows_out=3000, rows_rejected=0)


def _open_files_under(root: Path) -> dict[str, int]:
    """Files under `root` this process holds open (deleted ones too), with their sizes."""
    held = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(str(root)):
                held[target] = os.stat(f"/proc/self/fd/{fd}").st_size
        except OSError:
            continue
    return held


def _assert_nothing_half_written(root: Path) -> None:
    for mpath in root.rglob(store_mod.MANIFEST):
        manifest = json.loads(mpath.read_text())
        for parts in manifest["tables"].values():
            for part in parts:
                p = mpath.parent / part["file"]
                assert p.stat().st_size == part["bytes"] and store_mod.file_sha256(p) == part["sha256"], p
                with pq.ParquetFile(p) as pf:  # the footer reads
                    assert pf.metadata.num_rows == part["rows"], p
        assert all((mpath.parent / f).exists() for f in manifest.get("files", [])), mpath
    for p in root.rglob("*"):
        if any(x.startswith(".staging-") for x in p.relative_to(root).parts):
            continue
        assert ".tmp" not in p.name, p
        if p.suffix == ".parquet":
            with pq.ParquetFile(p) as pf:
                assert pf.metadata is not None
        elif p.suffix == ".json":
            json.loads(p.read_text())


@pytest.mark.parametrize("meanwhile", [False, True], ids=["fresh", "same-key-published-meanwhile"])
def test_full_disk_during_a_step_publishes_nothing_half_written(tmp_path, disk, meanwhile):
    # where the bytes go: three Parquet parts, the attached report, the manifest
    dry = ArtifactStore(tmp_path / "dry")
    expected = run_step(dry, "s", 1, ["i"], {}, "l", _three_parts)
    written = [(n, b) for n, b in disk.files if b]
    assert [n for n, _ in written][:3] == [".things-00000.parquet.tmp", ".things-00001.parquet.tmp",
                                           ".things-00002.parquet.tmp"]
    assert written[-1][0].startswith(".manifest.json.tmp")
    # the disk fills: before anything, half-way through each file, just short of each file's end (for
    # a Parquet part: inside its footer; the manifest's length varies by a few characters: its timing)
    budgets, used = [0], 0
    for name, size in written:
        budgets += [used + size // 2, used + size - (1 if name.endswith(".parquet.tmp") else 16)]
        used += size

    for i, budget in enumerate(budgets):
        store = ArtifactStore(tmp_path / f"a{i}")
        disk.free = budget

        def body(w):
            if meanwhile:  # an identical concurrent run publishes the same key while this one writes
                free, disk.free = disk.free, None
                run_step(store, "s", 1, ["i"], {}, "other run", _three_parts)
                disk.free = free
            _three_parts(w)

        with pytest.raises(OSError) as e:
            run_step(store, "s", 1, ["i"], {}, "l", body)
        assert e.value.errno == errno.ENOSPC, (budget, e.value)
        disk.free = None
        final = store.root / "s" / expected["key"]
        if meanwhile:
            kept = store.load("s", expected["key"], verify=True)
            assert kept is not None and kept["tables"] == expected["tables"], budget
            assert store.read(kept, "things").num_rows == 3000
        else:
            assert not final.exists(), budget
        assert [p.name for p in (store.root / "s").iterdir()] == ([final.name] if meanwhile else []), budget
        _assert_nothing_half_written(store.root)
        # the failed step's deleted part files do not keep holding the (full) disk's space (pyarrow
        # itself keeps its empty stream open when the 4-byte magic of a new part does not fit)
        deleted = {f: n for f, n in _open_files_under(store.root).items() if f.endswith(" (deleted)")}
        assert {f: n for f, n in deleted.items() if n} == {}, budget
        # and once there is space again, the step publishes (or reuses) the right thing
        again = run_step(store, "s", 1, ["i"], {}, "l", _three_parts)
        assert again["skipped"] == meanwhile and again["tables"] == expected["tables"]


def test_failed_step_releases_its_unfinished_part(store):
    """With pyarrow's own file writer (no injected disk): the part a failed step was writing is not
    held open after the step fails, so its space goes back at once."""

    def body(w):
        w.write("things", SCHEMA, [{"x": 1}])  # a part is open (fewer rows than part_rows)
        assert _open_files_under(store.root)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError) as e:
        run_step(store, "s", 1, [], {}, "l", body)
    assert e.value.errno == errno.ENOSPC
    assert not any((store.root / "s").iterdir())
    assert _open_files_under(store.root) == {}


def test_every_column_is_zstd_except_hash_columns(store):
    """Nested columns too (a per-column option names Parquet leaf paths, not field names)."""
    schema = pa.schema([("msgs", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
                        ("sig", pa.list_(pa.uint32(), 4)), ("key", pa.string())])
    rows = [{"msgs": [{"role": "user", "content": "hi " * 20}], "sig": [1, 2, 3, i], "key": str(i)} for i in range(50)]
    w = store.begin("c", "k" * 32)
    w.table("plain", schema).write(rows)
    w.table("hashed", schema, hash_columns=("sig",)).write(rows)
    m = w.commit()

    def codecs(table):
        md = pq.ParquetFile(store.paths(m, table)[0]).metadata.row_group(0)
        return {md.column(i).path_in_schema: md.column(i).compression for i in range(md.num_columns)}

    assert set(codecs("plain").values()) == {"ZSTD"}
    assert codecs("hashed") == {"msgs.list.element.role": "ZSTD", "msgs.list.element.content": "ZSTD",
                                "sig.list.element": "UNCOMPRESSED", "key": "ZSTD"}


def test_take_reads_rows_across_parts_and_row_groups(store):
    w = store.begin("t", "k" * 32)
    out = w.table("things", SCHEMA, part_rows=7)
    for i in range(0, 20, 3):  # each write is a row group; parts roll over every 7 rows
        out.write([{"x": j} for j in range(i, min(i + 3, 20))])
    m = w.commit()
    assert len(m["tables"]["things"]) == 3
    rows = np.array([0, 2, 6, 7, 13, 19])
    assert store.take(m, "things", rows)["x"].to_pylist() == rows.tolist()
    assert store.take(m, "things", np.array([], np.int64)).num_rows == 0
    with pytest.raises(TunelineError, match="has 20 rows; asked for rows 5..20"):
        store.take(m, "things", np.array([5, 20]))
