"""Evaluation speed with a real model: MMLU-format rank classification, shared prefix vs one
sequence per choice, and batched greedy generation.

    .venv/bin/python benchmarks/evaluate.py                       # 285 MMLU dev questions, SmolLM2-135M
    .venv/bin/python benchmarks/evaluate.py --mmlu 'DIR/*.csv' --model PATH --device cuda

Loads the model as the evaluate step does (`train.model` name, local path or hub name; fp32
on CPU) and times, on the same questions and the same labels (the reply's content, as
`rank_classify` scores it):

- `per-choice`: every (prompt + choice) sequence scored on its own, `--batch` sequences per
  forward (what Tuneline did before: the prompt runs once per choice);
- `shared-prefix`: `score_groups`, each prompt run once and its choices scored as
  continuations, `--batch` questions per forward (what `rank_classify` does now);

then `mmlu_suite` end to end (encoding included), and greedy generation of `--gen` held-out
style prompts, `--batch` per forward with left padding, one by one for comparison. Prints
seconds, questions/s, tokens run through the model, and the accuracy of both scorings (equal up
to float rounding). Set MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=17179869184 as the Makefile
does; the figures assume an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import glob
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from tasks.config import TrainConfig  # noqa: E402
from tasks.evaluate.mmlu import LETTERS, cloze_prompt, mmlu_prompt, read_mmlu_csv  # noqa: E402
from tasks.evaluate.scoring import greedy_generate, score_groups, score_sequences  # noqa: E402
from tasks.evaluate.suites import Scorer, mmlu_suite, reply_content  # noqa: E402
from tasks.model import load_pretrained  # noqa: E402
from tasks.model_registry import resolve_model  # noqa: E402
from tasks.tokens.chat import encode  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MMLU = str(REPO.parent / "shared" / "data" / "real" / "eval" / "mmlu_dev" / "*.csv")


def _groups(sc: Scorer, questions, score_by: str):
    groups = []
    for q in questions:
        prompt = cloze_prompt(q) if score_by == "cloze" else mmlu_prompt(q)
        choices = LETTERS if score_by == "letter" else q.choices
        seqs = []
        for c in choices:
            enc = sc.enc([{"role": "user", "content": prompt}, {"role": "assistant", "content": c}])
            seqs.append((list(enc.input_ids), reply_content(enc.labels, sc.special_ids)))
        groups.append(seqs)
    return groups


def _accuracy(scores, questions) -> float:
    right = sum(max(range(len(s)), key=lambda i: (s[i].logprob, -i)) == q.answer for s, q in zip(scores, questions))
    return right / len(questions)


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="train.model: a named model, local path or hub name")
    ap.add_argument("--mmlu", default=DEFAULT_MMLU, help="glob of MMLU-format CSV files")
    ap.add_argument("--score-by", default="letter", choices=["letter", "text", "cloze"])
    ap.add_argument("--batch", type=int, default=8, help="sequences / questions / prompts per forward")
    ap.add_argument("--gen", type=int, default=16, help="prompts to generate from (0: skip)")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--skip-per-choice", action="store_true", help="skip the slow baseline")
    args = ap.parse_args(argv)

    from transformers import AutoTokenizer

    path = resolve_model(args.model, lambda p: p)
    model = load_pretrained(path, TrainConfig(model=args.model)).to(args.device).eval()
    tok = AutoTokenizer.from_pretrained(path)
    questions = [q for f in sorted(glob.glob(args.mmlu)) for q in read_mmlu_csv(f)]
    if not questions:
        raise SystemExit(f"no MMLU questions in {args.mmlu}")
    sc = Scorer(model, tok, encode, 2048, "truncate", args.batch, args.device)
    print(f"model {args.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters) on "
          f"{args.device}, {torch.get_num_threads()} threads; {len(questions)} questions, score_by {args.score_by}, "
          f"batch {args.batch}")

    groups, t_enc = _timed(lambda: _groups(sc, questions, args.score_by))
    flat = [s for g in groups for s in g]
    print(f"encode: {t_enc:.1f} s for {len(flat)} sequences")
    shared, t_shared = _timed(lambda: score_groups(model, groups, args.batch, sc.pad_id, args.device))
    shared_tokens = sum(len(g[0][0]) + sum(len(ids) - len(g[0][0]) for ids, _ in g[1:]) for g in groups)
    rows = [("shared-prefix", t_shared, shared_tokens, _accuracy(shared, questions))]
    if not args.skip_per_choice:
        per, t_per = _timed(lambda: score_sequences(model, flat, args.batch, sc.pad_id, args.device))
        nested, k = [], 0
        for g in groups:
            nested.append(per[k:k + len(g)])
            k += len(g)
        rows.insert(0, ("per-choice", t_per, sum(len(ids) for ids, _ in flat), _accuracy(nested, questions)))
    suite, t_suite = _timed(lambda: mmlu_suite(sc, questions, args.score_by))
    print("| scoring | s | questions/s | tokens through the model (about) | accuracy |")
    print("|---|---:|---:|---:|---:|")
    for name, t, ntok, acc in rows:
        print(f"| {name} | {t:.1f} | {len(questions) / t:.1f} | {ntok:,} | {acc:.3f} |")
    overall = next(r for r in suite.rows if r["task"] is None and r["metric"] == "accuracy")
    print(f"mmlu_suite end to end (encoding included): {t_suite:.1f} s, accuracy {overall['value']:.3f} "
          f"(n {overall['n']})")

    if args.gen:
        prompts = [tok(tok.apply_chat_template([{"role": "user", "content": q.question.strip()}], tokenize=False,
                                               add_generation_prompt=True), add_special_tokens=False)["input_ids"]
                   for q in questions[: args.gen]]
        for bs in (1, args.batch):
            out, t = _timed(lambda: greedy_generate(model, prompts, args.max_new_tokens, bs, sc.pad_id,
                                                    tok.eos_token_id, args.device))
            print(f"generation batch {bs}: {len(prompts)} prompts in {t:.1f} s, "
                  f"{sum(len(o) for o in out) / t:.1f} new tokens/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
