"""`tuneline` command line: demo, demo-data, run, evaluate, server, query."""
from __future__ import annotations

import argparse
import atexit
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import NoReturn

from tasks.demo_data import DEMO_MODELS

REPO = Path(__file__).resolve().parents[1]


def _env_defaults(args) -> str:
    """Quiet and fast local runs; a user's own settings win. Returns the console log level."""
    level = args.log_level.upper() if args.command == "server" else "INFO"
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", level)
    if args.command == "server":
        os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", level)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # The temporary server takes 10-15 s to start on an idle 2-core machine, minutes on a busy one.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
    if not args.debug:
        os.environ["TUNELINE_HIDE_ERRORS"] = "1"  # shard workers too (flows/logs.py)
    return level


def _run(recipe: str, out: str, until: str | None) -> dict:
    from flows.pipeline import new_run_id, pipeline
    from flows.prefect_server import prefect_api

    with prefect_api():
        result = pipeline(recipe, out, until, new_run_id())
        _print_summary(out, result)
    return result


def cmd_demo_data(args) -> int:
    from tasks.demo_data import write_demo_data

    paths = write_demo_data(args.dir, seed=args.seed, model=args.model)
    for p in paths:
        print(p)
    return 0


def cmd_demo(args) -> int:
    from tasks.demo_data import write_demo_data

    data_dir = Path(args.out) / "demo-data"
    write_demo_data(data_dir, seed=0, model=args.model)  # with recipe.yaml: recipes/demo.yaml for the model
    _run(str(data_dir / "recipe.yaml"), args.out, None)
    return 0


def cmd_run(args) -> int:
    from tasks.recipe import load_recipe

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
    from flows import prefect_server

    if args.action == "stop":
        print(prefect_server.stop_server())
    elif args.action == "status":
        state = prefect_server.running_server()
        print(f"running: UI {state['ui_url']}, pid {state['pid']}" if state else "not running")
    else:
        prefect_server.serve(args.host, args.port, ui=not args.no_ui, log_level=args.log_level)
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
    if result.get("report"):
        print(f"\nreport (open in a browser): {result['report']}")
    if result.get("evaluate"):
        from tasks.evaluate import REPORT_FILE

        print(f"\nevaluation, base vs stages ({root / REPORT_FILE}):")
        print((root / REPORT_FILE).read_text())
        print("\ngenerations, base vs stages (all of them: select * from generations):")
        print(query(root, (REPO / "sql" / "reports" / "generations.sql").read_text()))


def build_parser() -> argparse.ArgumentParser:
    from flows.steps import STEPS

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true",
                        help="show tracebacks and Prefect's error logs instead of one error line")
    p = argparse.ArgumentParser(prog="tuneline", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    out_help = "artifacts directory (default ./artifacts)"

    d = sub.add_parser("demo", parents=[common],
                       help="write demo data and run the whole DAG on it (CPU; SmolLM2-135M-Instruct with LoRA)")
    d.add_argument("--out", default="artifacts", help=out_help + "; the demo data go to OUT/demo-data")
    d.add_argument("--model", choices=DEMO_MODELS, default=DEMO_MODELS[0],
                   help="smollm2-135m (default: the real model, about 5 minutes) or tiny (a model built from a "
                        "config, about a minute)")
    d.set_defaults(func=cmd_demo)

    dd = sub.add_parser("demo-data", parents=[common],
                        help="write demo input files in every native format, and a recipe")
    dd.add_argument("dir", help="directory to write the demo input files and recipe.yaml into")
    dd.add_argument("--model", choices=DEMO_MODELS, default=DEMO_MODELS[0], help="the model the recipe trains")
    dd.add_argument("--seed", type=int, default=0, help="seed of the generated rows (default 0)")
    dd.set_defaults(func=cmd_demo_data)

    r = sub.add_parser("run", parents=[common], help="run a recipe")
    r.add_argument("recipe", help="recipe YAML file")
    r.add_argument("--out", default="artifacts", help=out_help)
    r.add_argument("--until", default=None, choices=STEPS, metavar="STEP",
                   help="stop after this step: " + ", ".join(STEPS))
    r.set_defaults(func=cmd_run)

    e = sub.add_parser("evaluate", parents=[common],
                       help="(re-)evaluate the base model and every stage of a finished run")
    e.add_argument("recipe", help="recipe YAML file of the finished run")
    e.add_argument("--out", default="artifacts", help=out_help)
    e.set_defaults(func=cmd_evaluate)

    sv = sub.add_parser("server", parents=[common],
                        help="a lasting Prefect server (API, UI, scheduler) for deployments and workers")
    sv.add_argument("action", nargs="?", choices=["stop", "status"],
                    help="stop: stop the local server `tuneline run` started in the background (or this one); "
                         "status: say whether it runs. Without: serve in the foreground")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback only)")
    sv.add_argument("--port", type=int, default=4200, help="port to listen on (default 4200)")
    sv.add_argument("--no-ui", action="store_true", help="serve the API only, without the web UI")
    sv.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                    help="server log level (default warning: no per-request or scheduler lines)")
    sv.set_defaults(func=cmd_server)

    q = sub.add_parser("query", parents=[common], help="read-only SQL against the catalog")
    q.add_argument("sql", help="one SELECT (or EXPLAIN) statement")
    q.add_argument("--out", default="artifacts", help=out_help)
    q.add_argument("--format", default="table", choices=["table", "csv", "json"], help="output format (default table)")
    q.set_defaults(func=cmd_query)
    return p


def main(argv: list[str] | None = None) -> int:
    from tasks.errors import TunelineError

    args = build_parser().parse_args(argv)
    level = _env_defaults(args)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s")
    # httpx logs one line per API request; great-expectations a page of registry chatter.
    for noisy in ("httpx", "httpcore", "urllib3", "great_expectations"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not args.debug:
        from flows.logs import hide_known_errors

        hide_known_errors()
    try:
        rc = args.func(args)
    except TunelineError as exc:
        if args.debug:
            raise
        print(f"tuneline: error: {exc}", file=sys.stderr)
        rc = 2
    except BrokenPipeError:
        rc = _closed_pipe()
    if argv is None and args.command in QUICK_EXIT:  # the `tuneline` program, not a caller of main()
        _exit_now(rc)
    return rc


#: Commands after which the program ends without Python's teardown of its modules (`_exit_now`).
QUICK_EXIT = ("run", "demo", "evaluate")


def _exit_now(rc: int) -> NoReturn:
    """End the process as Python would, less the teardown of the modules a run imported
    (Prefect, pydantic, Arrow, Polars, SciPy: about half a second on two cores, a tenth of a
    small run): the threads that are not daemons are joined, the exit handlers run (logging,
    Prefect's log and event workers, temporary-file finalizers), the output is flushed."""
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(rc)


def _closed_pipe() -> int:
    """The reader went away (`tuneline query ... | head`): end quietly, as `cat` does."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # Python's flush at exit would raise again
    return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
