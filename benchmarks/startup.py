"""Per-run fixed cost of `tuneline run`: wall time of a small run to dedup, from the shell.

    .venv/bin/python benchmarks/startup.py --records 3000 --repeat 3 --workdir /tmp/tl-startup

Generates about `--records` rows in the native formats (benchmarks/pipeline.py's generator:
16 files, so 48 shard tasks), then times `tuneline run RECIPE --until dedup` as a user runs
it, in two modes:

- `temporary`: TUNELINE_SERVER=temporary, a Prefect server started and stopped for the run;
- `lasting`: the local lasting server `tuneline run` starts in the background on first use
  and reuses afterwards (one warm-up run first, not timed).

Every timed run uses a fresh artifacts directory, so each one computes every step (no cache
hit). Prints per run its wall seconds, the CPU seconds of the `tuneline run` process (user +
system, its children included) and of the lasting server while the run lasted (Linux), and the
1-minute load average before it: on a shared machine the load says how far to trust the wall
time. Then the median (and range) per mode and the dedup step's own seconds (from the catalog),
so the orchestration's share is visible.

With `--private-server` the runs use a Prefect home of their own under the workdir (a lasting
server of their own, stopped at the end), so other runs on the user's server neither slow
the runs nor count in the server's CPU seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TUNELINE = str(Path(sys.executable).with_name("tuneline"))


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _server_cpu(env: dict) -> float | None:
    """CPU seconds so far of the lasting server recorded in the Prefect home (None: none, or no /proc)."""
    home = Path(env.get("PREFECT_HOME", "~/.prefect")).expanduser()
    try:
        pid = json.loads((home / "tuneline-server.json").read_text())["pid"]
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, KeyError, IndexError):
        return None


def timed_run(recipe: Path, out: Path, mode: str, env: dict) -> dict:
    """Wall and CPU seconds of one `tuneline run --until dedup`, and its dedup step's seconds."""
    env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"} | {"TUNELINE_SERVER": mode}
    load = os.getloadavg()[0]
    cpu0, server0 = _children_cpu(), _server_cpu(env)
    t0 = time.perf_counter()
    res = subprocess.run([TUNELINE, "run", str(recipe), "--out", str(out), "--until", "dedup"], env=env,
                         capture_output=True, text=True)
    wall = time.perf_counter() - t0
    cpu, server1 = _children_cpu() - cpu0, _server_cpu(env)
    if res.returncode != 0:
        raise SystemExit(f"tuneline run failed ({res.returncode}):\n{res.stderr[-3000:]}")
    dedup = subprocess.run([TUNELINE, "query", "--out", str(out), "--format", "json",
                            "select sum(seconds) as s from runs where step = 'dedup'"],
                           capture_output=True, text=True, check=True, env=env).stdout
    return {"wall": wall, "cpu": cpu, "load": load, "dedup": json.loads(dedup)[0]["s"],
            "server_cpu": server1 - server0 if None not in (server0, server1) and mode == "lasting" else None}


def main() -> None:
    from benchmarks.pipeline import generate

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=3000, help="rows to generate (default 3000)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per mode (default 3)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/tl-startup"), help="where data and artifacts go")
    ap.add_argument("--modes", nargs="+", default=["temporary", "lasting"], choices=["temporary", "lasting"],
                    help="server modes to time (default both)")
    ap.add_argument("--private-server", action="store_true",
                    help="use a Prefect home (and lasting server) of its own under the workdir, stopped at the end")
    args = ap.parse_args()
    data = args.workdir / "data"
    generate(data, args.records)
    recipe = data / "recipe.yaml"
    env = dict(os.environ)
    if args.private_server:
        env["PREFECT_HOME"] = str((args.workdir / "prefect-home").resolve())
    try:
        for mode in args.modes:
            if mode == "lasting":
                timed_run(recipe, args.workdir / "warm-up", mode, env)  # starts the server if none runs
            runs = [timed_run(recipe, args.workdir / f"{mode}-{i}-{time.time_ns()}", mode, env)
                    for i in range(args.repeat)]
            for r in runs:
                server = f", server CPU {r['server_cpu']:.1f} s" if r["server_cpu"] is not None else ""
                print(f"{mode:9s}: wall {r['wall']:.1f} s, CPU {r['cpu']:.1f} s{server}, load before "
                      f"{r['load']:.2f}", flush=True)
            walls = [r["wall"] for r in runs]
            print(f"{mode:9s}: median wall {statistics.median(walls):.1f} s (range {min(walls):.1f}-{max(walls):.1f}); "
                  f"median CPU {statistics.median(r['cpu'] for r in runs):.1f} s; "
                  f"dedup step median {statistics.median(r['dedup'] for r in runs):.2f} s", flush=True)
    finally:
        if args.private_server:
            subprocess.run([TUNELINE, "server", "stop"], env=env, capture_output=True)


if __name__ == "__main__":
    main()
