"""Builders for training tests: validated records, a mixture, a recipe, made with the store directly."""
from __future__ import annotations

import random

from tasks.config import Recipe
from tasks.mix import MIXTURE
from tasks.schema import RECORDS, record_id
from tasks.store import ArtifactStore


WORDS = "the a cat dog sat ran on under mat box red blue big small one two three four five".split()


def make_records(n: int, seed: int = 0) -> list[dict]:
    """Deterministic short conversations: `nlp` rows (one turn, copy task) and `chat` rows (two turns)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        source = "nlp" if i % 2 == 0 else "chat"
        words = [rng.choice(WORDS) for _ in range(rng.randint(2, 8))]
        if source == "nlp":
            msgs = [{"role": "user", "content": "Repeat: " + " ".join(words)}, {"role": "assistant", "content": " ".join(words)}]
        else:
            msgs = [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Count " + words[0]},
                {"role": "assistant", "content": f"{words[0]} one"},
                {"role": "user", "content": "Reverse: " + " ".join(words)},
                {"role": "assistant", "content": " ".join(reversed(words))},
            ]
        rows.append(
            {
                "record_id": record_id(source, msgs, "", str(i)),
                "source": source,
                "task": source + "_task",
                "template_id": "",
                "example_id": str(i),
                "messages": msgs,
                "answer_choices": [],
                "origin_file": f"{source}.jsonl",
                "origin_row": i + 1,
                "n_turns": len(msgs),
                "n_chars": sum(len(m["content"]) for m in msgs),
                "lang": "en",
                "meta": "{}",
            }
        )
    return rows


def make_validate(store: ArtifactStore, rows: list[dict], key: str = "v" * 32) -> dict:
    w = store.begin("validate", key)
    w.write("records_valid", RECORDS, rows)
    w.stats.update(rows_in=len(rows), rows_out=len(rows), rows_rejected=0)
    return w.commit()


def make_mix(store: ArtifactStore, validate_manifest: dict, stages: dict[str, list[dict]], key: str = "m" * 32) -> dict:
    """A mix manifest: stages maps name -> record rows in training order."""
    w = store.begin("mix", key, inputs=[{"step": "validate", "key": validate_manifest["key"]}])
    out = []
    for stage, rows in stages.items():
        for pos, r in enumerate(rows):
            out.append({"stage": stage, "position": pos, "record_id": r["record_id"], "source": r["source"],
                        "task": r["task"], "repeat": 0, "n_tokens": 0})
    w.write("mixture", MIXTURE, out)
    w.stats.update(rows_in=len(out), rows_out=len(out), rows_rejected=0)
    return w.commit()


def recipe_dict(tmp_path, **train) -> dict:
    base = dict(model="tiny", vocab_size=300, max_seq_len=96, batch_size=4, lr=3e-3, checkpoint_every=2,
                tiny=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                          num_key_value_heads=1))
    base.update(train)
    return Recipe.model_validate(
        {
            "sources": [{"name": "nlp", "format": "dolly", "path": "x"}, {"name": "chat", "format": "dolly", "path": "x"}],
            "stages": [{"name": "one", "sources": ["nlp"]}, {"name": "two", "sources": ["chat", "nlp"]}],
            "train": base,
            "base_dir": str(tmp_path),
        }
    ).model_dump(by_alias=True)


