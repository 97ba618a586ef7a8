"""`catalog.duckdb`: views over the latest published Parquet of every step.

The catalog holds no data, only views naming Parquet files by absolute path. It is
rebuilt into a temp file and renamed over the old one, so a reader holding the old
file open keeps a consistent snapshot and never blocks a run.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from tasks.errors import TunelineError

if TYPE_CHECKING:
    from tasks.store import ArtifactStore

_READ_STATEMENTS = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
SQL_DIR = Path(__file__).resolve().parents[1] / "sql"
CATALOG = "catalog.duckdb"


def _sql(name: str) -> str:
    return (SQL_DIR / name).read_text()


def _file_list(paths: list[Path]) -> str:
    return "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "]"


def view_files(store: "ArtifactStore") -> dict[str, list[Path]]:
    """View name -> Parquet parts, from the manifests `latest.json` points at."""
    views: dict[str, list[Path]] = {}
    for step in store.latest():
        for manifest in store.latest_manifests(step):
            for table in manifest.get("tables", {}):
                views.setdefault(table, []).extend(store.paths(manifest, table))
    return views


def rebuild(store: "ArtifactStore") -> Path:
    """Write a fresh catalog next to the old one and rename it into place."""
    final = store.root / CATALOG
    tmp = store.root / f".{CATALOG}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        con = duckdb.connect(str(tmp))
        try:
            runs = sorted((store.root / "runs").glob("*.jsonl"))
            run_columns: set[str] = set()
            if runs:
                con.execute(_sql("views/runs.sql").format(files=_file_list(runs)))
                run_columns = {r[0] for r in con.execute("DESCRIBE runs").fetchall()}
            for name, files in sorted(view_files(store).items()):
                # A table with a view of its own (sql/views/<name>.sql: eval joins runs)
                own = SQL_DIR / "views" / f"{name}.sql"
                joinable = {"run_id", "step", "dir", "finished_at"} <= run_columns
                template = f"views/{name}.sql" if joinable and own.exists() else "views/table.sql"
                con.execute(_sql(template).format(name=name, files=_file_list(files)))
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


def connect_readonly(root: str | Path) -> duckdb.DuckDBPyConnection:
    """A read-only connection that may read files under the artifacts root and nowhere else."""
    root = Path(root).resolve()
    path = root / CATALOG
    if not path.exists():
        raise TunelineError(f"no catalog at {path}: run `tuneline run` or `tuneline demo` first")
    con = duckdb.connect(str(path), read_only=True, config={"autoinstall_known_extensions": False,
                                                             "autoload_known_extensions": False})
    # Order matters: allow the root, then cut external access, then freeze the settings.
    con.execute("SET allowed_directories = ?", [[str(root) + "/"]])
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def query(root: str | Path, sql: str, fmt: str = "table") -> str:
    """Run read-only SQL against the catalog and render the result as table, csv or json."""
    con = connect_readonly(root)
    try:
        try:
            statements = con.extract_statements(sql)
        except duckdb.Error as exc:
            raise TunelineError(f"query does not parse: {exc}") from None
        refused = [str(s.type).split(".")[-1] for s in statements if s.type not in _READ_STATEMENTS]
        if refused or len(statements) != 1:
            raise TunelineError(
                f"tuneline query runs exactly one read-only SELECT; refused: {refused or len(statements)}"
            )
        try:
            rel = con.execute(sql)
        except duckdb.Error as exc:
            raise TunelineError(f"query refused or failed (the catalog is read-only, files outside "
                                f"{Path(root).resolve()} are off limits): {exc}") from None
        if rel.description is None:
            return ""
        cols = [d[0] for d in rel.description]
        rows = rel.fetchall()
    finally:
        con.close()
    if fmt == "json":
        return json.dumps([dict(zip(cols, r)) for r in rows], default=str, ensure_ascii=False, indent=1)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(cols)
        w.writerows(rows)
        return buf.getvalue()
    if fmt != "table":
        raise TunelineError(f"unknown format {fmt!r}: use table, csv or json")
    return render_table(cols, rows)


def render_table(cols: list[str], rows: list[tuple], max_width: int = 60) -> str:
    def cell(v) -> str:
        s = "NULL" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))
        s = s.replace("\n", "\\n")
        return s if len(s) <= max_width else s[: max_width - 1] + "…"

    body = [[cell(v) for v in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in body]) for i, c in enumerate(cols)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cols), sep] + [line(r) for r in body] + [f"({len(rows)} rows)"])
