"""Alpaca reader: rows `{"instruction", "input"?, "output", "system"?, "history"?, "reasoning"?}`
as a JSON array, JSONL, CSV or Parquet (Stanford Alpaca, GPT-4-LLM, Unnatural Instructions,
Evol-Instruct, LIMA in LLaMA-Factory's layout), and Self-Instruct rows whose `instances` list
holds `{"input", "output"}` pairs under one `instruction`.

- The user turn is the instruction, then the input after a blank line when there is one
  (`template_id` `alpaca:instruction_input`, else `alpaca:instruction`); the assistant turn
  is the output, with `reasoning` (a separate trace, e.g. s1K's thinking trajectory,
  HuatuoGPT-o1's `Complex_CoT` mapped with `columns`) as its reasoning.
- `system` (a string) is the leading system turn; `history` (a list of `[user, assistant]`
  pairs) becomes the turns before the instruction.
- `instances`: one record per instance (meta `instance`, origin row the row's); an
  instance that is not an object is rejected `wrong_type` naming it.
- Missing / mistyped fields: `missing_field`, `null_field`, `wrong_type` naming the field;
  an empty output or instruction follows tasks.ingest.chat's empty-turn policy (cut
  before it, keeping complete exchanges of the history, else `empty_turn`).
- Option `columns` maps the dataset's names onto `instruction`, `input`, `output`,
  `system`, `history`, `instances`, `reasoning`, `id` (e.g. WizardLM's `Instruction`).
Other native fields go to `meta`. `example_id` = `id` when given, else a content hash of
the instruction, input and output. task = the source's `task` or `instruction`.
"""
from __future__ import annotations

from typing import Iterator

from tasks.ingest.chat import Turn, normalize
from tasks.ingest.common import FieldError, convert_reject, make_record, need_str, opt_str, stable_hash
from tasks.ingest.reader import Reader, register

FIELDS = ("instruction", "input", "output", "system", "history", "instances", "reasoning", "id")


def _history(raw: dict) -> list[Turn]:
    hist = raw.get("history")
    if hist is None:
        return []
    if not isinstance(hist, list):
        raise FieldError("wrong_type", f"field 'history' is {type(hist).__name__}, expected a list of pairs")
    turns = []
    for i, pair in enumerate(hist):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise FieldError("wrong_type", f"history[{i}] is not a [user, assistant] pair of strings")
        turns += [Turn(2 * i, "user", pair[0]), Turn(2 * i + 1, "assistant", pair[1])]
    return turns


def _prompt(instruction: str, inp: str) -> tuple[str, str]:
    if inp.strip():
        return "alpaca:instruction_input", f"{instruction.strip()}\n\n{inp.strip()}"
    return "alpaca:instruction", instruction.strip()


def _examples(raw: dict) -> list[tuple[int | None, dict]]:
    """(instance index or None, {input, output}) of a row: its own fields or its instances."""
    inst = raw.get("instances")
    if inst is None:
        return [(None, raw)]
    if not isinstance(inst, list) or not inst:
        raise FieldError("wrong_type", "field 'instances' must be a non-empty list of {input, output} objects")
    for i, x in enumerate(inst):
        if not isinstance(x, dict):
            raise FieldError("wrong_type", f"instances[{i}] is {type(x).__name__}, expected an object")
    return list(enumerate(inst))


def conversation(raw: dict, example: dict) -> tuple[str, list[dict], list[dict]]:
    """(template_id, messages, repairs) of one example; FieldError for a reject."""
    instruction = need_str(raw, "instruction")
    inp = opt_str(example, "input") or ""
    output = need_str(example, "output")
    template_id, user = _prompt(instruction, inp)
    system = opt_str(raw, "system")
    n = 2 * len(raw.get("history") or [])
    turns = ([Turn(-1, "system", system)] if system and system.strip() else []) + _history(raw)
    turns += [Turn(n, "user", user), Turn(n + 1, "assistant", output.strip(), opt_str(raw, "reasoning"))]
    messages, repairs = normalize(turns)
    return template_id, messages, repairs


@register
class AlpacaReader(Reader):
    name = "alpaca"
    fields = frozenset(FIELDS)

    @classmethod
    def convert(cls, recipe, source, rows, pool=None) -> Iterator[dict]:
        def build(raw, cols, origin_file, origin_row, native) -> list[dict]:
            return [cls._one(source, origin_file, origin_row, native, raw, idx, example)
                    for idx, example in _examples(raw)]

        return cls.convert_each(source, rows, build)

    @classmethod
    def _one(cls, source, origin_file, origin_row, native, raw, idx, example) -> dict:
        where = "" if idx is None else f"instances[{idx}]: "
        try:
            template_id, messages, repairs = conversation(raw, example)
        except FieldError as e:
            return convert_reject(source.name, origin_file, origin_row, e.reason, where + e.detail, native)
        meta = {k: v for k, v in raw.items() if k not in FIELDS}
        if idx is not None:
            meta["instance"] = idx
        if repairs:
            meta["repairs"] = repairs
        native_id = raw.get("id")
        example_id = (f"{native_id}" if native_id not in (None, "") else
                      stable_hash(raw.get("instruction"), example.get("input"), example.get("output"))[:20])
        if idx is not None:
            example_id = f"{example_id}:{idx}"
        return make_record(source=source.name, task=source.task or "instruction", template_id=template_id,
                           example_id=example_id, messages=messages, origin_file=origin_file,
                           origin_row=origin_row, meta=meta)
