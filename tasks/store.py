"""The artifact store: immutable, content-keyed step outputs with verifying manifests.

Layout under the artifacts root (default `./artifacts`)::

    <step>/<key>/<table>-00000.parquet   zstd Parquet parts
    <step>/<key>/manifest.json           written last; lists every part with rows, bytes, sha256
    runs/<run_id>.jsonl                  one line per step task of a run (the `runs` view)
    latest.json                          step -> manifests of the latest run that published it
    catalog.duckdb                       views over `latest.json`, rebuilt atomically

A step's key is a content hash of its inputs (file contents or upstream manifest keys),
its config and its version, never a run id: the same work always lands in the same
directory, and a directory whose manifest verifies is reused instead of recomputed.

Publishing is atomic at two levels: each file is written to a temp name, fsynced and
renamed; the whole step is staged in `<step>/.staging-<key>-<host>-<pid>-<rand>/` and the
directory is renamed to `<step>/<key>/` only after its manifest is written. A crash
leaves at most a staging directory, which nothing reads and the next run removes.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.errors import TunelineError

MANIFEST = "manifest.json"
PART_ROWS = 200_000


def _alive(pid: int) -> bool:
    """A process with this pid runs here (a zombie, killed but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


# Names the host in staging directory names, so a run never removes a live Dask worker's.
HOST_TAG = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

#: Test-only fault injection: set to a callable(point: str) to crash at named points.
FAULT_HOOK = None


def _fault(point: str) -> None:
    """Test-only crash points. TUNELINE_FAULT=<point> SIGKILLs the whole process group
    (the flow process and its shard workers), as a user's `kill -9` of the run would."""
    hook = FAULT_HOOK
    if hook is None and os.environ.get("TUNELINE_FAULT") == point:
        os.killpg(os.getpgrp(), 9)
    if hook is not None:
        hook(point)


def take_rows(paths: list, rows: np.ndarray, columns: list[str] | None = None) -> tuple[list[pa.Table], int]:
    """The rows `rows` (sorted row numbers over the Parquet files `paths`, in order), reading only
    the row groups that hold them: (one table per row group read, total rows of the files)."""
    out, base = [], 0
    for path in paths:
        f = pq.ParquetFile(path)
        for g in range(f.metadata.num_row_groups):
            n = f.metadata.row_group(g).num_rows
            lo, hi = np.searchsorted(rows, [base, base + n])
            if hi > lo:
                out.append(f.read_row_group(g, columns=columns).take(pa.array(rows[lo:hi] - base)))
            base += n
    return out, base


def upstream_refs(obj) -> list[dict]:
    """Every {step, key} reference nested in a manifest's `inputs`, in order."""
    if isinstance(obj, dict):
        if isinstance(obj.get("step"), str) and isinstance(obj.get("key"), str):
            return [obj]
        return [r for v in obj.values() for r in upstream_refs(v)]
    if isinstance(obj, list):
        return [r for v in obj for r in upstream_refs(v)]
    return []


def safe_name(name: str, what: str = "name") -> str:
    """Refuse names that could escape a directory (`..`, `/`, NUL, absolute paths)."""
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or ".." in name:
        raise TunelineError(
            f"invalid {what} {name!r}: use letters, digits, '_', '-', '.', no '..', at most 128 chars"
        )
    return name


def content_hash(obj: Any) -> str:
    """sha256 of a canonical JSON rendering (sorted keys), for configs and key parts."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def step_key(step: str, version: int, inputs: Any, config: Any) -> str:
    """Content key of a step: its name, version, inputs and config. No run id, no time."""
    return content_hash({"step": step, "version": version, "inputs": inputs, "config": config})[:32]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, rename, fsync the directory."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        _fault("before_rename")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n").encode())


def _column_options(schema: pa.Schema, hash_columns: tuple[str, ...]) -> dict:
    """ParquetWriter options: zstd with dictionaries and statistics, except for the leaf
    columns of `hash_columns`. Per-column options name Parquet leaf paths (a nested column
    left out of a compression dict would be written uncompressed), so the paths are taken
    from the Parquet schema of an empty table."""
    if not hash_columns:
        return {"compression": "zstd"}
    sink = pa.BufferOutputStream()
    pq.write_table(schema.empty_table(), sink)
    leaves = pq.ParquetFile(pa.BufferReader(sink.getvalue())).schema
    paths = [leaves.column(i).path for i in range(len(leaves))]
    plain = [p for p in paths if p.split(".")[0] not in hash_columns]
    return {"compression": {p: "zstd" if p in plain else "none" for p in paths},
            "use_dictionary": plain, "write_statistics": plain}


@dataclass
class _TableWriter:
    """Streams record batches of one table into rolling zstd Parquet parts."""

    directory: Path
    name: str
    schema: pa.Schema
    part_rows: int
    hash_columns: tuple[str, ...] = ()
    parts: list[dict] = field(default_factory=list)
    _writer: pq.ParquetWriter | None = None
    _tmp: Path | None = None
    _final: Path | None = None
    _rows: int = 0

    def write(self, data: pa.Table | pa.RecordBatch | list[dict]) -> None:
        if isinstance(data, list):
            data = pa.Table.from_pylist(data, schema=self.schema)
        elif data.schema != self.schema:
            data = pa.Table.from_batches([data]) if isinstance(data, pa.RecordBatch) else data
            data = data.select(self.schema.names).cast(self.schema)
        offset = 0
        while offset < data.num_rows:
            if self._writer is None:
                self._open()
            take = min(self.part_rows - self._rows, data.num_rows - offset)
            self._writer.write(data.slice(offset, take), row_group_size=65_536)
            self._rows += take
            offset += take
            if self._rows >= self.part_rows:
                self._close_part()

    def _open(self) -> None:
        self._final = self.directory / f"{self.name}-{len(self.parts):05d}.parquet"
        self._tmp = self.directory / f".{self._final.name}.tmp"
        self._writer = pq.ParquetWriter(self._tmp, self.schema, **_column_options(self.schema, self.hash_columns))
        self._rows = 0

    def _close_part(self) -> None:
        self._writer.close()
        with open(self._tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(self._tmp, self._final)
        self.parts.append(
            {
                "file": self._final.name,
                "rows": self._rows,
                "bytes": self._final.stat().st_size,
                "sha256": file_sha256(self._final),
            }
        )
        self._writer = None

    def discard(self) -> None:
        """Drop the open part unfinished and release its file now (not when the writer is collected:
        until then a deleted part would keep holding its disk space, on a full disk too)."""
        writer, self._writer = self._writer, None
        if writer is None:
            return
        writer.is_open = False  # no footer for a part that is thrown away, now or from __del__
        if writer.file_handle is not None:
            with contextlib.suppress(Exception):
                writer.file_handle.close()

    def close(self) -> list[dict]:
        if self._writer is None and not self.parts:
            self._open()  # an empty table still gets one part, so its view has a schema
        if self._writer is not None:
            self._close_part()
        return self.parts


class StepWriter:
    """Stages one step's tables; `commit()` writes the manifest and publishes the directory."""

    def __init__(self, store: "ArtifactStore", step: str, key: str, meta: dict):
        self.store, self.step, self.key, self.meta = store, step, key, meta
        store.inside(store.root / step)
        self.dir = store.root / step / f".staging-{key}-{HOST_TAG}-{os.getpid()}-{secrets.token_hex(4)}"
        self.dir.mkdir(parents=True)
        self._tables: dict[str, _TableWriter] = {}
        self.stats: dict[str, Any] = {}

    def table(self, name: str, schema: pa.Schema, part_rows: int = PART_ROWS,
              hash_columns: tuple[str, ...] = ()) -> _TableWriter:
        """The writer of a table. `hash_columns`: columns of random hashes, written without a
        dictionary, compression or min/max statistics, which cannot shrink or summarise them
        (several times faster)."""
        if name not in self._tables:
            self._tables[safe_name(name, "table name")] = _TableWriter(self.dir, name, schema, part_rows, hash_columns)
        return self._tables[name]

    def write(self, name: str, schema: pa.Schema, data) -> None:
        self.table(name, schema).write(data)

    def attach_file(self, name: str, data: bytes | None = None, copy_of: Path | None = None) -> None:
        """A non-Parquet file kept with the step (a report, a validation result, weights):
        `data`, or a streamed copy of the file `copy_of` (weights can be large); atomic."""
        dst = self.dir / safe_name(name, "file name")
        if copy_of is None:
            atomic_write_bytes(dst, data)
        else:
            tmp = dst.with_name(f".{dst.name}.tmp")
            shutil.copyfile(copy_of, tmp)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, dst)
        self.meta.setdefault("files", []).append(name)

    def commit(self) -> dict:
        tables = {name: w.close() for name, w in self._tables.items()}
        manifest = {
            **self.meta,
            "step": self.step,
            "key": self.key,
            "tables": tables,
            "stats": self.stats,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        _fault(f"{self.step}:before_manifest")
        atomic_write_json(self.dir / MANIFEST, manifest)
        final = self.store.root / self.step / self.key
        if final.exists() and self.store.load(self.step, self.key) is None:
            # A published directory that no longer verifies (damaged on disk): keep it aside
            # for inspection and publish the recomputed one.
            os.rename(final, final.with_name(f".invalid-{self.key}-{int(time.time())}"))
        try:
            os.rename(self.dir, final)
        except OSError:
            # Someone published the same key first (a concurrent identical run): theirs wins.
            shutil.rmtree(self.dir, ignore_errors=True)
            existing = self.store.load(self.step, self.key)
            if existing is None:
                raise
            return existing
        _fsync_dir(final.parent)
        return self.store.load(self.step, self.key, verify=False)

    def keep_table(self, name: str, dest: Path) -> list[Path]:
        """Finish table `name` and move its parts to `dest` (a failed step keeps its rejects
        there, outside every step directory, so a user can query why it failed). Returns the
        parts' new paths, none if the step wrote no such table."""
        writer = self._tables.get(name)
        if writer is None:
            return []
        self.store.inside(dest)
        dest.mkdir(parents=True, exist_ok=True)
        moved = []
        for part in writer.close():
            os.replace(self.dir / part["file"], dest / part["file"])
            moved.append(dest / part["file"])
        return moved

    def abort(self) -> None:
        for w in self._tables.values():
            w.discard()
        shutil.rmtree(self.dir, ignore_errors=True)


class ArtifactStore:
    """Content-keyed, verified step outputs under one root directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    # -- steps -------------------------------------------------------------------
    def inside(self, path: Path) -> Path:
        """`path` itself, after checking that it resolves (symlinks followed) under the root."""
        if not path.resolve().is_relative_to(self.root):
            raise TunelineError(f"{path} leads outside the artifacts directory {self.root}; refused")
        return path

    def step_dir(self, step: str, key: str) -> Path:
        return self.inside(self.root / safe_name(step, "step") / safe_name(key, "key"))

    def upstream(self, manifests: dict | list[dict], step: str, verify: bool = True) -> dict | None:
        """The first published manifest of `step` that the given manifests read (their `inputs`)."""
        for m in manifests if isinstance(manifests, list) else [manifests]:
            for ref in upstream_refs(m.get("inputs", {})):
                if ref["step"] == step:
                    found = self.load(step, ref["key"], verify=verify)
                    if found is not None:
                        return found
        return None

    def load(self, step: str, key: str, verify: bool = True) -> dict | None:
        """The step's manifest if it is published and every part verifies, else None."""
        d = self.step_dir(step, key)
        try:
            manifest = json.loads((d / MANIFEST).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        manifest["dir"] = str(d.relative_to(self.root))
        if verify and not self._verifies(d, manifest):
            return None
        return manifest

    def _verifies(self, d: Path, manifest: dict) -> bool:
        for parts in manifest.get("tables", {}).values():
            for part in parts:
                p = d / part["file"]
                try:
                    if p.stat().st_size != part["bytes"] or file_sha256(p) != part["sha256"]:
                        return False
                except FileNotFoundError:
                    return False
        return all((d / f).exists() for f in manifest.get("files", []))

    def begin(self, step: str, key: str, **meta) -> StepWriter:
        return StepWriter(self, safe_name(step, "step"), safe_name(key, "key"), meta)

    def paths(self, manifest: dict, table: str) -> list[Path]:
        """Absolute paths of a table's parts in a manifest (empty list if it has none)."""
        d = self.root / manifest["dir"]
        return [d / part["file"] for part in manifest.get("tables", {}).get(table, [])]

    def read(self, manifests: dict | Iterable[dict], table: str, columns: list[str] | None = None) -> pa.Table:
        """Read one table across one or several manifests (small tables only)."""
        if isinstance(manifests, dict):
            manifests = [manifests]
        files = [p for m in manifests for p in self.paths(m, table)]
        return pa.concat_tables([pq.ParquetFile(f).read(columns=columns) for f in files]) if files else None

    def take(self, manifest: dict, table: str, rows: np.ndarray, columns: list[str] | None = None) -> pa.Table:
        """The rows `rows` (sorted row numbers over the table's parts, in manifest order) of a
        table, reading only the row groups that hold them."""
        rows = np.asarray(rows, np.int64)
        paths = self.paths(manifest, table)
        if not paths:
            raise TunelineError(f"{manifest['dir']} has no table {table}")
        out, base = take_rows(paths, rows, columns)
        if len(rows) and (rows[0] < 0 or rows[-1] >= base):
            raise TunelineError(f"{manifest['dir']}/{table} has {base} rows; asked for rows {rows[0]}..{rows[-1]}")
        if not out:
            schema = pq.read_schema(paths[0])
            return schema.empty_table().select(columns) if columns is not None else schema.empty_table()
        return pa.concat_tables(out)

    def iter_batches(
        self, manifests: dict | Iterable[dict], table: str, columns: list[str] | None = None, batch_size: int = 65_536
    ) -> Iterator[pa.RecordBatch]:
        if isinstance(manifests, dict):
            manifests = [manifests]
        for m in manifests:
            for p in self.paths(m, table):
                yield from pq.ParquetFile(p).iter_batches(batch_size=batch_size, columns=columns)

    def clean_staging(self, other_hosts_after_s: float = 24 * 3600) -> int:
        """Remove staging directories left by crashed runs: those of a dead process on this
        host, and those of other hosts (Dask workers) untouched for `other_hosts_after_s`."""
        removed = 0
        for d in self.root.glob("*/.staging-*"):
            parts = d.name.split("-")  # .staging, key, host tag, pid, random
            if len(parts) != 5 or not parts[3].isdigit():
                continue
            if parts[2] == HOST_TAG:
                stale = not _alive(int(parts[3]))
            else:
                stale = time.time() - d.stat().st_mtime >= other_hosts_after_s
            if stale:
                shutil.rmtree(d, ignore_errors=True)
                removed += 1
        return removed

    # -- runs, latest pointers, lock -----------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Serialises updates of latest.json, run files and the catalog across processes."""
        with open(self.root / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def latest(self) -> dict[str, list[str]]:
        try:
            return json.loads((self.root / "latest.json").read_text())
        except FileNotFoundError:
            return {}

    def latest_manifests(self, step: str) -> list[dict]:
        out = []
        for rel in self.latest().get(step, []):
            step_name, key = rel.split("/")
            m = self.load(step_name, key, verify=False)
            if m is not None:
                out.append(m)
        return out

    def set_latest(self, step: str, manifests: list[dict]) -> None:
        """Point `latest.json` at a finished step's manifests (call under `lock()`)."""
        latest = self.latest()
        latest[step] = [m["dir"] for m in manifests]
        atomic_write_json(self.root / "latest.json", latest)


class RunLog:
    """`runs/<run_id>.jsonl`: one line per step task of one run (the `runs` view)."""

    def __init__(self, store: ArtifactStore, run_id: str, recipe: str):
        self.store, self.run_id, self.recipe = store, safe_name(run_id, "run id"), recipe
        self.path = store.root / "runs" / f"{self.run_id}.jsonl"
        self.path.parent.mkdir(exist_ok=True)

    def append(self, rows: list[dict]) -> None:
        """Add rows to the run's file (called under the store lock; the flows of one run
        each hold their own RunLog, so the file on disk is the source of truth)."""
        try:
            blob = self.path.read_bytes()
        except FileNotFoundError:
            blob = b""
        for r in rows:
            blob += (json.dumps({"run_id": self.run_id, "recipe": self.recipe, **r}, sort_keys=True, default=str) + "\n").encode()
        atomic_write_bytes(self.path, blob)
