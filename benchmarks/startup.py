"""Per-run fixed cost of `tuneline run`: wall time of a small run to dedup, from the shell.

    .venv/bin/python benchmarks/startup.py --records 3000 --repeat 3 --workdir /tmp/tl-startup

Generates about `--records` rows in the native formats (benchmarks/pipeline.py's generator),
then times `tuneline run RECIPE --until dedup` as a user runs it, in two modes:

- `temporary`: TUNELINE_SERVER=temporary, a Prefect server started and stopped for the run;
- `lasting`: the local lasting server `tuneline run` starts in the background on first use
  and reuses afterwards (one warm-up run first, not timed).

Every timed run uses a fresh artifacts directory, so each one computes every step (no cache
hit). Prints the wall seconds of each run, the median per mode, and the dedup step's own
seconds (from the catalog), so the orchestration's share is visible.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TUNELINE = str(Path(sys.executable).with_name("tuneline"))


def timed_run(recipe: Path, out: Path, mode: str) -> tuple[float, float]:
    """(wall seconds of the command, seconds of its dedup step)."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"TUNELINE_SERVER": mode}
    t0 = time.perf_counter()
    res = subprocess.run([TUNELINE, "run", str(recipe), "--out", str(out), "--until", "dedup"], env=env,
                         capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"tuneline run failed ({res.returncode}):\n{res.stderr[-3000:]}")
    dedup = subprocess.run([TUNELINE, "query", "--out", str(out), "--format", "json",
                            "select sum(seconds) as s from runs where step = 'dedup'"],
                           capture_output=True, text=True, check=True).stdout
    return wall, json.loads(dedup)[0]["s"]


def main() -> None:
    from benchmarks.pipeline import generate

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=3000, help="rows to generate (default 3000)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per mode (default 3)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/tl-startup"), help="where data and artifacts go")
    ap.add_argument("--modes", nargs="+", default=["temporary", "lasting"], choices=["temporary", "lasting"],
                    help="server modes to time (default both)")
    args = ap.parse_args()
    data = args.workdir / "data"
    generate(data, args.records)
    recipe = data / "recipe.yaml"
    for mode in args.modes:
        if mode == "lasting":
            timed_run(recipe, args.workdir / "warm-up", mode)  # starts the server if none runs
        results = [timed_run(recipe, args.workdir / f"{mode}-{i}-{time.time_ns()}", mode) for i in range(args.repeat)]
        walls = [w for w, _ in results]
        print(f"{mode:9s}: wall {', '.join(f'{w:.1f}' for w in walls)} s; median {statistics.median(walls):.1f} s; "
              f"dedup step median {statistics.median(d for _, d in results):.2f} s", flush=True)


if __name__ == "__main__":
    main()
