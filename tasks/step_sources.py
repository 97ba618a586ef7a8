"""Stale caches: the guard between a step's code and its cache key.

A step's content key (tasks/store.py `step_key`) holds its inputs, its config and its
`VERSION`, not its code: a refactor, a comment or a faster implementation keeps every
finished artifact valid (a two-hour training stage is not thrown away because a log line
changed). The risk is a behaviour change with a forgotten `VERSION` bump, which would
serve old artifacts as new. `step_versions.json` beside this module records, per step,
its `VERSION` and a fingerprint of the code it owns (`STEP_SOURCES`: the Python AST of each
file, docstrings left out, so comments and docstrings do not count). The test
`tests/test_step_sources.py` fails when a fingerprint no longer matches, and says what to
do: bump the step's `VERSION` when its output can differ, then record the new state with

    .venv/bin/python -m tasks.step_sources --update
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import importlib
import json
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
LOCK = Path(__file__).with_name("step_versions.json")

#: step -> (module holding its VERSION, the files whose code decides its output).
STEP_SOURCES: dict[str, tuple[str, tuple[str, ...]]] = {
    "ingest": ("tasks.ingest.run", ("tasks/ingest/*.py", "tasks/schema.py")),
    "convert": ("tasks.convert", ("tasks/convert.py", "tasks/render.py", "tasks/ingest/*.py", "tasks/schema.py")),
    "dedup-signatures": ("tasks.dedup.signatures", ("tasks/dedup/signatures.py", "tasks/dedup/minhash.py",
                                                    "tasks/dedup/kernels.py", "tasks/dedup/content.py")),
    "dedup": ("tasks.dedup.cluster", ("tasks/dedup/cluster.py",)),
    "split": ("tasks.split", ("tasks/split.py",)),
    "validate": ("tasks.validate.step", ("tasks/validate/*.py", "tasks/decontam.py", "tasks/langid.py",
                                         "tasks/answers.py")),
    "tokenizer": ("tasks.tokens.tokenizer", ("tasks/tokens/tokenizer.py", "tasks/tokens/chat.py",
                                             "tasks/model_registry.py")),
    "mix": ("tasks.mix", ("tasks/mix.py", "tasks/tokens/count.py", "tasks/tokens/chat.py")),
    "train": ("tasks.train_sft.launch", ("tasks/train_sft/*.py", "tasks/model.py", "tasks/tokens/chat.py")),
    "evaluate": ("tasks.evaluate.run", ("tasks/evaluate/run.py", "tasks/evaluate/suites.py",
                                        "tasks/evaluate/scoring.py", "tasks/evaluate/metrics.py",
                                        "tasks/evaluate/mmlu.py", "tasks/answers.py", "tasks/model.py",
                                        "tasks/tokens/chat.py")),
}


def _without_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return tree


def files_of(step: str) -> list[Path]:
    return sorted({p for pattern in STEP_SOURCES[step][1] for p in PROJECT.glob(pattern)})


def fingerprint(step: str) -> str:
    """sha256 over the step's files: each one's path and docstring-free AST."""
    h = hashlib.sha256()
    for path in files_of(step):
        tree = _without_docstrings(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        h.update(str(path.relative_to(PROJECT)).encode() + b"\0" + ast.dump(tree).encode() + b"\0")
    return h.hexdigest()[:16]


def version_of(step: str) -> int:
    return importlib.import_module(STEP_SOURCES[step][0]).VERSION


def current() -> dict[str, dict]:
    return {step: {"version": version_of(step), "code": fingerprint(step)} for step in STEP_SOURCES}


def recorded() -> dict[str, dict]:
    return json.loads(LOCK.read_text()) if LOCK.exists() else {}


def problems(now: dict[str, dict], then: dict[str, dict]) -> list[str]:
    """What differs between the code and the record, each with what to do."""
    out = []
    for step, state in now.items():
        old = then.get(step)
        module = STEP_SOURCES[step][0]
        if old is None:
            out.append(f"{step}: not recorded yet; run `python -m tasks.step_sources --update`")
        elif state["code"] != old["code"] and state["version"] == old["version"]:
            out.append(f"{step}: its code changed but {module}.VERSION is still {state['version']}. If the step's "
                       f"output can differ, bump VERSION (old artifacts would be served as new otherwise); then "
                       f"run `python -m tasks.step_sources --update`")
        elif state != old:
            out.append(f"{step}: VERSION {old['version']} -> {state['version']}; record it with "
                       f"`python -m tasks.step_sources --update`")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check or record each step's VERSION against its code.")
    parser.add_argument("--update", action="store_true", help=f"write the current state to {LOCK.name}")
    args = parser.parse_args(argv)
    now = current()
    if args.update:
        LOCK.write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
        print(f"wrote {LOCK}")
        return 0
    found = problems(now, recorded())
    print("\n".join(found) or "every step's code matches its recorded VERSION")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
