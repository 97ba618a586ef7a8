"""Super-NaturalInstructions reader: task files (one JSON object per file: `Definition` (a list
of strings), `Positive Examples` (`{input, output, explanation}`), `Instances` (`{id, input,
output: [acceptable answers]}`), `Categories`, `Domains`, ...).

`read` yields one row per instance (origin row = its 1-based position in `Instances`); a
file that is not a task object, or lacks `Instances`, is one reject naming the field. The
task header (definition, positive examples) is read once per file by `exemplar_pool`.

Each instance is rendered with a template type drawn per instance (seeded by the recipe
seed, the source and the instance id, recorded in `template_id` `super_ni:<type>` and meta
`template_type`), from option `template_types` (default both):
- `zero_shot`: `Definition: …`, then `Now complete the following example -`, the input;
- `few_shot`: the definition, `num_exemplars` (default 2) positive examples drawn with the
  same seed (indices in meta `exemplars`), then the input; a task without positive examples
  (or `num_exemplars: 0`) renders zero-shot. Positive examples are the task
  author's demonstrations, never instances, so they never leak a held-out instance.
The target is the first acceptable output (all of them in meta `outputs` when several).
meta `shots_chars` marks where the instance starts (decontamination reads only the
instance). An instance without input / output, or with an empty one, is rejected naming it.
task = the source's `task`, else the file's task name (`task1146_country_capital`).
"""
from __future__ import annotations

import random
import re
from typing import Iterator

from tasks.decontam import SHOTS_CHARS
from tasks.errors import RecipeError
from tasks.ingest.common import (
    FieldError,
    convert_reject,
    data_stem,
    dumps,
    iter_json_document,
    make_record,
    need_str,
    stable_int,
)
from tasks.ingest.reader import Reader, register

TEMPLATE_TYPES = ("zero_shot", "few_shot")
_TASK_NAME = re.compile(r"^(task\d+_\w+?)(?:\.|$)")


def _header(doc: dict) -> dict:
    """Definition text and positive examples of a task object; FieldError when unusable."""
    definition = doc.get("Definition")
    if isinstance(definition, list) and all(isinstance(d, str) for d in definition):
        definition = "\n".join(definition)
    if not isinstance(definition, str) or not definition.strip():
        raise FieldError("missing_field", "field 'Definition' is missing or not text")
    positives = [e for e in doc.get("Positive Examples") or [] if isinstance(e, dict)
                 and isinstance(e.get("input"), str) and isinstance(e.get("output"), str)]
    return {"definition": definition.strip(), "positives": positives, "categories": doc.get("Categories") or []}


def _instances(file: str) -> Iterator[tuple]:
    for item in iter_json_document(file):
        if item[0] == "reject":
            yield item
            continue
        doc = item[2]
        inst = doc.get("Instances")
        if not isinstance(inst, list):
            yield ("reject", item[1], "missing_field", "field 'Instances' is missing or not a list", item[3][:400])
            continue
        for i, x in enumerate(inst, 1):
            if isinstance(x, dict):
                yield ("row", i, x, dumps(x))
            else:
                yield ("reject", i, "wrong_type", f"Instances[{i - 1}] is {type(x).__name__}, expected an object",
                       dumps(x))


def render(header: dict, exemplars: list[dict], inp: str) -> tuple[str, int]:
    """(user turn, characters before the instance)."""
    shots = "".join(f"Positive Example {i} -\nInput: {e['input'].strip()}\nOutput: {e['output'].strip()}\n\n"
                    for i, e in enumerate(exemplars, 1))
    head = f"Definition: {header['definition']}\n\n{shots}"
    return f"{head}Now complete the following example -\nInput: {inp.strip()}", len(head)


def _target(x: dict) -> tuple[str, list[str]]:
    out = x.get("output")
    outs = [out] if isinstance(out, str) else out
    if not isinstance(outs, list) or not all(isinstance(o, str) for o in outs):
        raise FieldError("wrong_type" if "output" in x else "missing_field", "field 'output' must be a list of strings")
    outs = [o for o in outs if o.strip()]
    if not outs:
        raise FieldError("empty_field", "field 'output' has no non-empty answer")
    return outs[0].strip(), outs


@register
class SuperNIReader(Reader):
    name = "super_ni"
    options_allowed = frozenset({"template_types", "num_exemplars"})

    @classmethod
    def check_source(cls, recipe, source) -> None:
        super().check_source(recipe, source)
        types = source.options.get("template_types", list(TEMPLATE_TYPES))
        if not isinstance(types, list) or not types or any(t not in TEMPLATE_TYPES for t in types):
            raise RecipeError(f"source {source.name!r}: options.template_types must be a non-empty list of "
                              f"{list(TEMPLATE_TYPES)}; got {types!r}")
        n = source.options.get("num_exemplars", 2)
        if not isinstance(n, int) or not 0 <= n <= 16:
            raise RecipeError(f"source {source.name!r}: options.num_exemplars must be an int 0..16, got {n!r}")

    @classmethod
    def read(cls, recipe, source, file: str) -> Iterator[tuple]:
        return _instances(file)

    @classmethod
    def exemplar_pool(cls, recipe, source, file, rows):
        """The task header of the file (definition, positive examples), or the FieldError it raises."""
        doc = next((i[2] for i in iter_json_document(file) if i[0] == "row"), {})
        try:
            return _header(doc)
        except FieldError as e:
            return e

    @classmethod
    def _task(cls, source, file: str) -> str:
        m = _TASK_NAME.match(data_stem(file))
        return source.task or (m.group(1) if m else data_stem(file))

    @classmethod
    def convert(cls, recipe, source, rows, pool=None) -> Iterator[dict]:
        for origin_file, origin_row, x in rows:
            try:
                if isinstance(pool, FieldError):
                    raise pool
                yield cls._record(recipe, source, origin_file, origin_row, x, pool)
            except FieldError as e:
                yield convert_reject(source.name, origin_file, origin_row, e.reason, e.detail, x)

    @classmethod
    def _record(cls, recipe, source, origin_file, origin_row, x, header) -> dict:
        inp = need_str(x, "input", allow_empty=False)
        target, outputs = _target(x)
        instance_id = str(x.get("id") or f"{data_stem(origin_file)}-{origin_row}")
        rng = random.Random(stable_int(recipe.seed, source.name, instance_id))
        ttype = rng.choice(list(source.options.get("template_types", TEMPLATE_TYPES)))
        k = min(source.options.get("num_exemplars", 2), len(header["positives"])) if ttype == "few_shot" else 0
        picked = sorted(rng.sample(range(len(header["positives"])), k))
        ttype = ttype if picked or ttype == "zero_shot" else "zero_shot"  # a task without positive examples
        user, shots = render(header, [header["positives"][i] for i in picked], inp)
        meta = {"template_type": ttype, "exemplars": picked, "instance_id": instance_id, SHOTS_CHARS: shots,
                "categories": header["categories"], **({"outputs": outputs} if len(outputs) > 1 else {})}
        return make_record(source=source.name, task=cls._task(source, origin_file), template_id=f"super_ni:{ttype}",
                           example_id=instance_id, messages=[{"role": "user", "content": user},
                                                             {"role": "assistant", "content": target}],
                           origin_file=origin_file, origin_row=origin_row, meta=meta)
