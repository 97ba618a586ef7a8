"""`tuneline` command line: demo, demo-data, run, evaluate, server, query."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _env_defaults() -> None:
    # Quiet and fast local runs; a user's own settings win.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # The temporary server takes 10-15 s to start on an idle 2-core machine, minutes on a busy one.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")


def _run(recipe: str, out: str, until: str | None) -> dict:
    from flows.pipeline import pipeline
    from flows.prefect_server import prefect_api

    with prefect_api():
        result = pipeline(recipe, out, until)
        _print_summary(out, result)
    return result


def cmd_demo_data(args) -> int:
    from tasks.demo_data import write_demo_data

    paths = write_demo_data(args.dir, seed=args.seed)
    for p in paths:
        print(p)
    return 0


def cmd_demo(args) -> int:
    from tasks.demo_data import write_demo_data

    data_dir = Path(args.out) / "demo-data"
    write_demo_data(data_dir, seed=0)  # with recipe.yaml, a copy of recipes/demo.yaml
    _run(str(data_dir / "recipe.yaml"), args.out, None)
    return 0


def cmd_run(args) -> int:
    from tasks.config import load_recipe

    load_recipe(args.recipe)  # fail on a bad recipe before Prefect starts
    _run(args.recipe, args.out, args.until)
    return 0


def cmd_evaluate(args) -> int:
    from flows.pipeline import evaluate_finished
    from flows.prefect_server import prefect_api

    with prefect_api():
        result = evaluate_finished(args.recipe, args.out)
        _print_summary(args.out, result)
    return 0


def cmd_server(args) -> int:
    from flows.prefect_server import serve

    serve(args.host, args.port, ui=not args.no_ui)
    return 0


def cmd_query(args) -> int:
    from tasks.catalog import query

    print(query(args.out, args.sql, args.format))
    return 0


def _print_summary(out: str, result: dict) -> None:
    from tasks.catalog import query

    root = Path(out).resolve()
    print(f"\nrun {result.get('run_id')}: artifacts in {root}, catalog {root / 'catalog.duckdb'}")
    print(query(root, (REPO / "sql" / "reports" / "step_counts.sql").read_text()))
    if result.get("evaluate"):
        from tasks.evaluate import REPORT_FILE

        print(f"\nevaluation, base vs stages ({root / REPORT_FILE}):")
        print((root / REPORT_FILE).read_text())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tuneline", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="write demo data and run the whole DAG on it (CPU, tiny model)")
    d.add_argument("--out", default="artifacts", help="artifacts directory (default ./artifacts)")
    d.set_defaults(func=cmd_demo)

    dd = sub.add_parser("demo-data", help="write demo input files in every native format, and a recipe")
    dd.add_argument("dir")
    dd.add_argument("--seed", type=int, default=0)
    dd.set_defaults(func=cmd_demo_data)

    r = sub.add_parser("run", help="run a recipe")
    r.add_argument("recipe")
    r.add_argument("--out", default="artifacts")
    r.add_argument("--until", default=None, help="stop after this step: ingest, convert, dedup, split, "
                                                 "validate, mix, train, evaluate")
    r.set_defaults(func=cmd_run)

    e = sub.add_parser("evaluate", help="(re-)evaluate the base model and every stage of a finished run")
    e.add_argument("recipe")
    e.add_argument("--out", default="artifacts")
    e.set_defaults(func=cmd_evaluate)

    sv = sub.add_parser("server", help="a lasting Prefect server (API, UI, scheduler) for deployments and workers")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback only)")
    sv.add_argument("--port", type=int, default=4200)
    sv.add_argument("--no-ui", action="store_true")
    sv.set_defaults(func=cmd_server)

    q = sub.add_parser("query", help="read-only SQL against the catalog")
    q.add_argument("sql")
    q.add_argument("--out", default="artifacts")
    q.add_argument("--format", default="table", choices=["table", "csv", "json"])
    q.set_defaults(func=cmd_query)
    return p


def main(argv: list[str] | None = None) -> int:
    from tasks.errors import TunelineError

    _env_defaults()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # httpx logs one line per API request; great-expectations a page of registry chatter.
    for noisy in ("httpx", "httpcore", "urllib3", "great_expectations"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TunelineError as exc:
        print(f"tuneline: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
