"""`catalog.duckdb`: views over the latest published Parquet of every step.

The catalog holds no data, only views naming Parquet files by paths relative to the
artifacts directory, so a copied or moved directory keeps working: DuckDB resolves them
against its working directory (`cd artifacts && duckdb catalog.duckdb`) or
`file_search_path`. It is written in storage version `STORAGE_VERSION`, which every DuckDB
since 1.0 reads (DuckDB 2.0's default format is unreadable before 2.0). It is rebuilt into
a temp file and renamed over the old one, so a reader holding the old file open keeps a
consistent snapshot and never blocks a run; `query` rebuilds a catalog of an older format.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import secrets
import threading
from pathlib import Path
from typing import Iterator

import duckdb

from tasks import markdown, sql
from tasks.errors import TunelineError
from tasks.store import ArtifactStore, RunLog

_READ_STATEMENTS = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
SQL_DIR = Path(__file__).resolve().parents[1] / "sql"
CATALOG = "catalog.duckdb"
#: The oldest DuckDB storage format that holds views: DuckDB 1.0 and every later version open it.
STORAGE_VERSION = "v1.0.0"
#: Bumped when the catalog's layout changes; `query` rebuilds a catalog of another format.
#: 2: paths relative to the artifacts directory, storage STORAGE_VERSION, `records.row_key`.
FORMAT = 2
HOW_TO_OPEN = ("paths are relative to the artifacts directory: cd there and run `duckdb catalog.duckdb`, "
               "or SET file_search_path = '<artifacts directory>' first")
_CWD_LOCK = threading.Lock()


def _sql(name: str) -> str:
    return (SQL_DIR / name).read_text()


def _file_list(paths: list[Path], root: Path) -> str:
    """A DuckDB list literal of the paths, relative to the artifacts root."""
    return sql.path_list(p.relative_to(root) for p in paths)


def view_files(store: "ArtifactStore") -> dict[str, list[Path]]:
    """View name -> Parquet parts, from the manifests `latest.json` points at."""
    views: dict[str, list[Path]] = {}
    for step in store.latest():
        for manifest in store.latest_manifests(step):
            for table in manifest.get("tables", {}):
                views.setdefault(table, []).extend(store.paths(manifest, table))
    return views


def _records_parts(store: "ArtifactStore") -> str:
    """VALUES rows (file, shard, label, first row) for every part of the convert shards, in
    the order dedup numbers them, so `records` gets the (shard, row) that `dedup_removed` lists."""
    rows = []
    for shard, manifest in enumerate(store.latest_manifests("convert")):
        first = 0
        for path, part in zip(store.paths(manifest, "records"), manifest["tables"].get("records", [])):
            rows.append(f"({sql.literal(path.relative_to(store.root))}, {shard}, "
                        f"{sql.literal(manifest.get('label', manifest['key']))}, {first})")
            first += part["rows"]
    return ", ".join(rows)


def _create_views(con: duckdb.DuckDBPyConnection, store: "ArtifactStore") -> None:
    root = store.root
    runs = sorted((root / "runs").glob("*.jsonl"))
    run_columns: set[str] = set()
    if runs:
        con.execute(_sql("views/runs.sql").format(files=_file_list(runs, root)))
        run_columns = {r[0] for r in con.execute("DESCRIBE runs").fetchall()}
    joinable = {"run_id", "step", "dir", "finished_at"} <= run_columns
    parts = _records_parts(store)
    for name, files in sorted(view_files(store).items()):
        # A table with a view of its own: eval joins runs, records numbers its rows per shard
        own = SQL_DIR / "views" / f"{name}.sql"
        usable = own.exists() and (joinable if name == "eval" else bool(parts) if name == "records" else True)
        template = f"views/{name}.sql" if usable else "views/table.sql"
        con.execute(_sql(template).format(name=name, files=_file_list(files, root), parts=parts))
    con.execute(_sql("views/tuneline_catalog.sql").format(format=FORMAT, storage=sql.literal(STORAGE_VERSION),
                                                          how=sql.literal(HOW_TO_OPEN)))


def rebuild(store: "ArtifactStore") -> Path:
    """Write a fresh catalog next to the old one and rename it into place."""
    final = store.root / CATALOG
    tmp = store.root / f".{CATALOG}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        con = duckdb.connect(str(tmp), config={"storage_compatibility_version": STORAGE_VERSION})
        try:
            con.execute("SET file_search_path = ?", [str(store.root)])  # views are bound as they are made
            _create_views(con, store)
            con.execute("CHECKPOINT")
        finally:
            con.close()
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        with contextlib.suppress(FileNotFoundError):
            Path(str(tmp) + ".wal").unlink()
    return final


def catalog_format(path: Path) -> int | None:
    """The FORMAT a catalog file was written with (None: before formats were recorded)."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute("SELECT format FROM tuneline_catalog").fetchone()[0]
    except duckdb.CatalogException:
        return None
    finally:
        con.close()


def _ensure_current(root: Path) -> Path:
    """The catalog path, rebuilt first when it is missing (but steps are published) or of
    another format (absolute paths into a directory that may have moved)."""
    path = root / CATALOG
    if path.exists() and catalog_format(path) == FORMAT:
        return path
    if not (root / "latest.json").exists():
        raise TunelineError(f"no catalog at {path}: run `tuneline run` or `tuneline demo` first")
    store = ArtifactStore(root)
    with store.lock():
        if not path.exists() or catalog_format(path) != FORMAT:
            rebuild(store)
    return path


def connect(root: str | Path) -> duckdb.DuckDBPyConnection:
    """A plain read-only connection, as a DuckDB user opens the catalog from anywhere: with
    `file_search_path` at the artifacts directory. No sandbox; `readonly` is `tuneline query`'s."""
    root = Path(root).resolve()
    con = duckdb.connect(str(root / CATALOG), read_only=True)
    con.execute("SET file_search_path = ?", [str(root)])
    return con


@contextlib.contextmanager
def _working_dir(path: Path) -> Iterator[None]:
    """DuckDB resolves the views' relative paths, and checks them against
    `allowed_directories`, from the process's working directory."""
    with _CWD_LOCK:
        before = os.getcwd()
        os.chdir(path)
        try:
            yield
        finally:
            os.chdir(before)


@contextlib.contextmanager
def readonly(root: str | Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection that may read files under the artifacts root and nowhere else."""
    root = Path(root).resolve()
    path = _ensure_current(root)
    with _working_dir(root):
        con = duckdb.connect(str(path), read_only=True, config={"autoinstall_known_extensions": False,
                                                                 "autoload_known_extensions": False})
        try:
            # Order matters: allow the root, then cut external access, then freeze the settings.
            con.execute("SET allowed_directories = ?", [[str(root) + "/"]])
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
            yield con
        finally:
            con.close()


def _statement(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse anything but exactly one SELECT or EXPLAIN, with DuckDB's own parser message."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise TunelineError(str(exc)) from None
    refused = [str(s.type).split(".")[-1] for s in statements if s.type not in _READ_STATEMENTS]
    if refused or len(statements) != 1:
        raise TunelineError(
            f"tuneline query runs exactly one read-only SELECT; refused: {refused or len(statements)}"
        )


def query(root: str | Path, sql: str, fmt: str = "table") -> str:
    """Run read-only SQL against the catalog and render the result as table, csv or json."""
    if fmt not in ("table", "csv", "json"):
        raise TunelineError(f"unknown format {fmt!r}: use table, csv or json")
    with readonly(root) as con:
        _statement(con, sql)
        try:
            rel = con.execute(sql)
            cols = [d[0] for d in rel.description] if rel.description else []
            rows = rel.fetchall() if cols else []
        except duckdb.PermissionException as exc:
            first, _, context = str(exc).partition("\n")
            hint = f" (tuneline query reads only files under {Path(root).resolve()})"
            raise TunelineError(first + hint + ("\n" + context if context else "")) from None
        except duckdb.Error as exc:
            raise TunelineError(str(exc)) from None
    if not cols:
        return ""
    if fmt == "json":
        return json.dumps([dict(zip(cols, r)) for r in rows], default=str, ensure_ascii=False, indent=1)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(cols)
        w.writerows(rows)
        return buf.getvalue()
    return render_table(cols, rows)


def render_table(cols: list[str], rows: list[tuple], max_width: int = 60) -> str:
    """Query results as a padded Markdown table, long values cut at `max_width`."""
    def show(v) -> str:
        s = "NULL" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))
        s = s.replace("\n", "\\n")
        return s if len(s) <= max_width else s[: max_width - 1] + "…"

    return markdown.table(cols, [[show(v) for v in r] for r in rows], pad=True) + f"({len(rows)} rows)"


def publish_step(store: ArtifactStore, run: RunLog, step: str, manifests: list[dict], rows: list[dict]) -> None:
    """Record a finished step of a run, point `latest` at it and rebuild the catalog, under
    the store's lock (a step is visible in DuckDB as soon as it is published)."""
    with store.lock():
        store.set_latest(step, manifests)
        run.append(rows)
        rebuild(store)
