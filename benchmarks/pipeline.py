"""Scale benchmark of the data steps (ingest through mix) on a synthetic corpus.

    .venv/bin/python benchmarks/pipeline.py --sizes 10000 100000 1000000 --workdir /tmp/tl-bench

Generates N records in the native formats (Dolly JSONL, ShareGPT JSONL with long multi-turn
conversations, FLAN collection JSONL with short targets, P3 JSONL), with 2% exact and 3% near
duplicates and a few broken rows; then runs every data step through the same functions the
Prefect tasks call, shard steps on a process pool of --workers processes. Prints per step:
wall seconds, rows/s, peak RSS (of the whole process tree), Parquet bytes written; then the
growth exponent of total time between the two largest sizes. With --flow it also runs the
Prefect `prepare` flow on the largest size and reports the share of wall time spent in
orchestration (flow wall time minus the sum of step times, over flow wall time).

With --keep the artifacts stay; `--rerun STEP [--repeat K]` then runs one step again, K times,
on them (its own output is deleted first, its inputs are the kept upstream manifests) and
prints wall seconds and the CPU seconds of the whole process tree per repeat:

    .venv/bin/python benchmarks/pipeline.py --sizes 1000000 --workdir /tmp/tlb-1m --keep
    .venv/bin/python benchmarks/pipeline.py --sizes 1000000 --workdir /tmp/tlb-1m --rerun mix --repeat 3
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import math
import os
import random
import shutil
import sys
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WORDS = [
    "data", "model", "river", "garden", "number", "history", "music", "planet", "engine", "market",
    "energy", "language", "city", "window", "forest", "science", "story", "problem", "answer", "table",
    "system", "light", "water", "travel", "memory", "signal", "value", "paper", "school", "health",
    "simple", "quick", "bright", "ancient", "modern", "small", "large", "careful", "useful", "strange",
    "explain", "compare", "describe", "build", "measure", "write", "choose", "improve", "find", "list",
] + [f"w{i}" for i in range(4000)]


class Sentences:
    """Fast pseudo-text: seeded word sequences from a Zipf-ish vocabulary."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        weights = [1.0 / (i + 1) ** 0.8 for i in range(len(WORDS))]
        self.cum = list(__import__("itertools").accumulate(weights))

    def text(self, n_words: int) -> str:
        words = self.rng.choices(WORDS, cum_weights=self.cum, k=max(1, n_words))
        return " ".join(words).capitalize() + "."


def _mutate(text: str, rng: random.Random) -> str:
    words = text.split()
    for _ in range(max(1, len(words) // 40)):  # ~2.5% of words changed: Jaccard over 5-grams ~0.85
        words[rng.randrange(len(words))] = rng.choice(WORDS)
    return " ".join(words)


def generate(root: Path, n: int, seed: int = 0, files_per_format: int = 4, workers: int = 1) -> dict:
    """Write about `n` rows split over four formats (files written on `workers` processes; each
    file's rows depend only on its seed); returns the recipe dict."""
    root.mkdir(parents=True, exist_ok=True)
    shares = {"flan": 0.4, "p3": 0.2, "dolly": 0.25, "sharegpt": 0.15}
    recipe_sources, jobs = [], []
    for fmt, share in shares.items():
        rows_fmt = int(n * share)
        per_file = math.ceil(rows_fmt / files_per_format)
        for f in range(files_per_format):
            jobs.append((root / f"{fmt}-{f:02d}.jsonl", fmt, min(per_file, rows_fmt - f * per_file), seed * 1000 + f))
        recipe_sources.append({"name": fmt, "format": fmt, "path": f"{fmt}-*.jsonl"})
    with cf.ProcessPoolExecutor(max(workers, 1)) as pool:
        list(pool.map(_write_format, *zip(*jobs)))
    recipe = {
        "sources": recipe_sources,
        "on_error": "lenient",
        "split": {"eval_fraction": 0.01},
        "validate": {"max_turn_chars": 50_000, "max_conversation_chars": 200_000},
        "stages": [
            {"name": "nlp", "strategy": "proportional", "cap_per_task": max(100, n // 20), "sources": ["flan", "p3"]},
            {"name": "chat", "strategy": "target", "shares": {"dolly": 0.45, "sharegpt": 0.45},
             "replay": {"from": "nlp", "share": 0.1}},
        ],
        "train": {"vocab_size": 1024},
    }
    (root / "recipe.yaml").write_text(json.dumps(recipe, indent=1))  # JSON is YAML
    return recipe


def _write_format(path: Path, fmt: str, rows: int, seed: int) -> None:
    rng = random.Random(seed)
    gen = Sentences(seed)
    previous: list[str] = []
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(max(rows, 0)):
            r = rng.random()
            if previous and r < 0.02:  # exact duplicate of an earlier row
                fh.write(rng.choice(previous))
                continue
            line = json.dumps(_row(fmt, gen, rng, i), ensure_ascii=False) + "\n"
            if previous and r < 0.05:  # near duplicate: an earlier row with a few words changed
                line = json.dumps(_near(json.loads(rng.choice(previous)), rng), ensure_ascii=False) + "\n"
            elif r > 0.9995:  # a broken row (never a model for later duplicates)
                fh.write(line[: len(line) // 2] + "\n")
                continue
            fh.write(line)
            if len(previous) < 2000:
                previous.append(line)
            elif rng.random() < 0.01:
                previous[rng.randrange(2000)] = line


def _near(row: dict, rng: random.Random) -> dict:
    out = {}
    for k, v in row.items():
        if isinstance(v, str) and len(v.split()) > 20:
            out[k] = _mutate(v, rng)
        elif k == "conversations":
            out[k] = [{**t, "value": _mutate(t["value"], rng)} for t in v]
        else:
            out[k] = v
    return out


def _row(fmt: str, gen: Sentences, rng: random.Random, i: int) -> dict:
    if fmt == "flan":
        return {"inputs": gen.text(rng.randint(40, 260)), "targets": gen.text(rng.randint(1, 12)),
                "_task_name": f"task{rng.randrange(60)}", "_task_source": "Flan2021",
                "_template_type": rng.choice(["zs_opt", "zs_noopt", "fs_opt", "fs_noopt"]),
                "_template_idx": rng.randrange(10)}
    if fmt == "p3":
        choices = ["yes", "no", "maybe"]
        return {"inputs": gen.text(rng.randint(40, 200)), "targets": rng.choice(choices),
                "answer_choices": choices}
    if fmt == "dolly":
        return {"instruction": gen.text(rng.randint(8, 30)),
                "context": gen.text(rng.randint(60, 250)) if rng.random() < 0.3 else "",
                "response": gen.text(rng.randint(30, 300)),
                "category": rng.choice(["open_qa", "closed_qa", "brainstorming", "summarization"])}
    turns = []
    for t in range(rng.choice([2, 2, 4, 4, 6, 8])):
        turns.append({"from": "human" if t % 2 == 0 else "gpt",
                      "value": gen.text(rng.randint(15, 80) if t % 2 == 0 else rng.randint(80, 400))})
    return {"id": f"c{i}", "conversations": turns}


class RssSampler:
    """Peak resident memory of this process and all its children, sampled every 0.1 s."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me] + me.children(recursive=True):
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.1)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _bytes(root: Path, manifests: list[dict]) -> int:
    return sum(p["bytes"] for m in manifests for parts in m["tables"].values() for p in parts)


def _du(path: Path) -> float:
    """GB on disk under `path`."""
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file()) / 2**30


def run_steps(data: Path, out: Path, workers: int) -> list[dict]:
    """Every data step through the same functions the Prefect tasks call; one row per step."""
    from tasks.convert import convert_shard
    from tasks.dedup import dedup, signatures
    from tasks.ingest.run import ingest_file
    from tasks.mix import mix
    from tasks.recipe import load_recipe
    from tasks.split import split
    from tasks.tokens.tokenizer import build_tokenizer
    from tasks.validate import validate

    recipe = load_recipe(data / "recipe.yaml")
    rd = recipe.model_dump(by_alias=True)
    root = str(out)
    shards = [(s.name, f) for s in recipe.sources for f in recipe.source_files(s)]
    results = []

    def timed(step, fn, rows_of):
        with RssSampler() as rss:
            t0 = time.perf_counter()
            manifests = fn()
            dt = time.perf_counter() - t0
        manifests = manifests if isinstance(manifests, list) else [manifests]
        rows = rows_of(manifests)
        results.append({"step": step, "seconds": dt, "rows": rows, "rows_per_s": rows / dt if dt else 0,
                        "peak_rss_gb": rss.peak / 2**30, "parquet_mb": _bytes(out, manifests) / 2**20})
        return manifests

    rows_in = lambda ms: sum(m["stats"]["rows_in"] for m in ms)
    with cf.ProcessPoolExecutor(workers) as pool:
        ing = timed("ingest", lambda: list(pool.map(ingest_file, *zip(*[(root, rd, s, f) for s, f in shards]))), rows_in)
        conv = timed("convert", lambda: list(pool.map(convert_shard, [root] * len(ing), [rd] * len(ing), ing)), rows_in)
        sigs = timed("dedup-signatures", lambda: list(pool.map(signatures, [root] * len(conv), [rd] * len(conv), conv)), rows_in)
    dd = timed("dedup", lambda: dedup(root, rd, conv, sigs), rows_in)[0]
    sp = timed("split", lambda: split(root, rd, dd), rows_in)[0]
    va = timed("validate", lambda: validate(root, rd, sp), rows_in)[0]
    tok = timed("tokenizer", lambda: build_tokenizer(root, rd, va), lambda ms: va["stats"]["rows_out"])[0]
    timed("mix", lambda: mix(root, rd, va, sp, tok), lambda ms: va["stats"]["rows_out"])
    return results


#: --rerun: the steps that can run again alone, and the upstream steps whose manifests they take.
RERUN = {"convert": ["ingest"], "split": ["dedup"], "validate": ["split"], "tokenizer": ["validate"],
         "mix": ["validate", "split", "tokenizer"]}


def _manifests(out: Path, step: str) -> list[dict]:
    from tasks.store import ArtifactStore

    store = ArtifactStore(out)
    return [store.load(step, d.name, verify=False) for d in sorted((out / step).glob("*/")) if (d / "manifest.json").is_file()]


def _cpu_seconds(me: psutil.Process) -> float:
    """CPU seconds of this process, its finished children and its live ones."""
    t = me.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for p in me.children(recursive=True):
        try:
            c = p.cpu_times()
            total += c.user + c.system
        except psutil.Error:
            pass
    return total


def rerun(data: Path, out: Path, step: str, repeat: int, workers: int) -> None:
    """Run one step again `repeat` times on the artifacts of an earlier --keep run."""
    from tasks.convert import convert_shard
    from tasks.mix import mix
    from tasks.recipe import load_recipe
    from tasks.split import split
    from tasks.tokens.tokenizer import build_tokenizer
    from tasks.validate import validate

    rd = load_recipe(data / "recipe.yaml").model_dump(by_alias=True)
    root = str(out)
    up = {s: _manifests(out, s) for s in RERUN[step]}
    for s, ms in up.items():
        if not ms or (s != "ingest" and len(ms) != 1):
            raise SystemExit(f"--rerun {step}: expected {'manifests' if s == 'ingest' else 'one manifest'} "
                             f"of {s} under {out / s}, found {len(ms)}")
    one = {s: ms[0] for s, ms in up.items()}
    runs = {
        "convert": lambda: list(pool.map(convert_shard, [root] * len(up["ingest"]), [rd] * len(up["ingest"]),
                                         up["ingest"])),
        "split": lambda: split(root, rd, one["dedup"]),
        "validate": lambda: validate(root, rd, one["split"]),
        "tokenizer": lambda: build_tokenizer(root, rd, one["validate"]),
        "mix": lambda: mix(root, rd, one["validate"], one["split"], one["tokenizer"]),
    }
    me = psutil.Process()
    print(f"{'step':<12}{'repeat':>7}{'wall s':>9}{'CPU s':>9}{'peak RSS GB':>13}", flush=True)
    with cf.ProcessPoolExecutor(workers) as pool:
        for k in range(repeat):
            shutil.rmtree(out / step, ignore_errors=True)
            with RssSampler() as rss:
                c0, t0 = _cpu_seconds(me), time.perf_counter()
                runs[step]()
                dt, cpu = time.perf_counter() - t0, _cpu_seconds(me) - c0
            print(f"{step:<12}{k + 1:>7}{dt:>9.1f}{cpu:>9.1f}{rss.peak / 2**30:>13.2f}", flush=True)


def run_flow(data: Path, out: Path) -> float:
    """Wall seconds of the Prefect `prepare` flow, on the temporary server `tuneline run`
    starts (its start-up is not counted)."""
    from flows.pipeline import prepare, shard_runner
    from flows.prefect_server import prefect_api

    with prefect_api():
        t0 = time.perf_counter()
        prepare.with_options(task_runner=shard_runner())(str(data / "recipe.yaml"), str(out))
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--workdir", default="/tmp/tuneline-bench")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--flow", action="store_true", help="also run the Prefect flow on the largest size")
    ap.add_argument("--keep", action="store_true", help="keep generated data and artifacts")
    ap.add_argument("--rerun", choices=sorted(RERUN), help="run this step again on the artifacts a --keep run left")
    ap.add_argument("--repeat", type=int, default=1, help="with --rerun: how many times")
    args = ap.parse_args()
    if args.rerun:
        for n in args.sizes:
            work = Path(args.workdir) / f"n{n}"
            rerun(work / "data", work / "artifacts", args.rerun, args.repeat, args.workers)
        return

    totals = {}
    for n in args.sizes:
        work = Path(args.workdir) / f"n{n}"
        shutil.rmtree(work, ignore_errors=True)
        t0 = time.perf_counter()
        generate(work / "data", n, workers=args.workers)
        gen_s = time.perf_counter() - t0
        json_gb = sum(p.stat().st_size for p in (work / "data").glob("*.jsonl")) / 2**30
        print(f"\n== {n:,} records ({json_gb:.2f} GB of JSON, generated in {gen_s:.0f} s)", flush=True)
        results = run_steps(work / "data", work / "artifacts", args.workers)
        print(f"{'step':<18}{'wall s':>9}{'rows/s':>12}{'peak RSS GB':>13}{'Parquet MB':>12}")
        for r in results:
            print(f"{r['step']:<18}{r['seconds']:>9.1f}{r['rows_per_s']:>12,.0f}{r['peak_rss_gb']:>13.2f}{r['parquet_mb']:>12.1f}")
        total = sum(r["seconds"] for r in results)
        totals[n] = total
        print(f"{'total':<18}{total:>9.1f}   peak RSS {max(r['peak_rss_gb'] for r in results):.2f} GB")
        print(f"disk: data {_du(work / 'data'):.2f} GB, artifacts {_du(work / 'artifacts'):.2f} GB")
        if args.flow and n == max(args.sizes):
            flow_s = run_flow(work / "data", work / "artifacts-flow")
            print(f"Prefect prepare flow: {flow_s:.1f} s wall; orchestration share "
                  f"{max(flow_s - total, 0) / flow_s:.1%} (flow wall minus step time, over flow wall)")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    sizes = sorted(totals)
    if len(sizes) >= 2:
        a, b = sizes[-2], sizes[-1]
        exp = math.log(totals[b] / totals[a]) / math.log(b / a)
        print(f"\ngrowth exponent of total time from {a:,} to {b:,}: {exp:.2f}")


if __name__ == "__main__":
    main()
