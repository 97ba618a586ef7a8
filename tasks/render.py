"""Template rendering shared by the readers.

- promptsource: `load_promptsource(path)` parses a promptsource templates.yaml (custom
  tags `!Template`, `!TemplateMetadata`); `render_promptsource` renders one template for
  one row in a sandboxed Jinja environment (ImmutableSandboxedEnvironment, StrictUndefined,
  no `__` names, bounded output, bounded string/list repetition).
- FLAN CoT: the project's own FLAN-style templates for the four FLAN template types
  (`zs_opt`, `zs_noopt`, `fs_opt`, `fs_noopt`), several wordings each (`COT_TEMPLATES`).
- Dolly: instruction templates with and without context (`DOLLY_TEMPLATES`).

All wording here is the project's own.
"""
from __future__ import annotations

import contextvars
import functools
import operator
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from jinja2 import StrictUndefined, TemplateError, pass_context
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from tasks.answers import is_bare_label
from tasks.errors import RecipeError

#: Longest rendered promptsource output (characters) before the rendering is refused.
MAX_RENDER_CHARS = 100_000
SEPARATOR = "|||"


class RenderError(Exception):
    """A template failed for one row; `reason` is the reject reason, the message names template and row."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


# -- the sandbox -------------------------------------------------------------------------
#: Loop iterations over `range` one rendering may make in all (nested loops multiply).
MAX_RANGE_STEPS = 1_000_000
#: Largest number a template may pass to a call, use as a power or as a format width.
MAX_NUMBER = 10**64
_RANGE_STEPS: contextvars.ContextVar[list[int]] = contextvars.ContextVar("tuneline_range_steps")
_PADDING_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})
_WIDE_FORMAT = re.compile(r"%[-+ #0]*\d{6,}|\{[^{}]*:[^{}]*\d{6,}[^{}]*\}")


def _budgeted_range(*args):
    """`range` whose iterations count against the rendering's budget (MAX_RANGE_STEPS)."""
    budget = _RANGE_STEPS.get(None)
    for i in range(*args):
        if budget is not None:
            budget[0] += 1
            if budget[0] > MAX_RANGE_STEPS:
                raise SecurityError(f"loops over range() exceed {MAX_RANGE_STEPS} iterations")
        yield i


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """Immutable sandbox that also refuses what would run or allocate without bound: huge
    `*` / `**` results (`'a' * 10**9`, `((10**64)**64)**64`), nested loops over `range`
    beyond MAX_RANGE_STEPS iterations in all, padding beyond the output bound (`'x'.center(10**9)`)
    and format strings with huge widths (`'%0999999999d' % 1`, `'{:>999999999}'.format(1)`)."""

    intercepted_binops = frozenset(["*", "**", "%"])

    def __init__(self, max_chars: int = MAX_RENDER_CHARS, **kw):
        super().__init__(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True, **kw)
        self.max_chars = max_chars
        self.globals["range"] = _budgeted_range
        builtin_format = self.filters["format"]

        def bounded_format(value, *args, **kwargs):  # '%0999999999d' | format(1)
            if isinstance(value, str) and _WIDE_FORMAT.search(value):
                raise SecurityError("format width is too large")
            return builtin_format(value, *args, **kwargs)

        self.filters["format"] = bounded_format

    def call(self, context, obj, *args, **kwargs):
        # str methods that allocate a string as long as their number argument
        if isinstance(getattr(obj, "__self__", None), str) and getattr(obj, "__name__", "") in _PADDING_METHODS:
            for a in (*args, *kwargs.values()):
                if isinstance(a, int) and a > self.max_chars:
                    raise SecurityError(f"str.{obj.__name__}({a}) exceeds {self.max_chars} characters")
        return super().call(context, obj, *args, **kwargs)

    def wrap_str_format(self, value):  # '{:>999999999}'.format(1)
        owner = getattr(value, "__self__", None)
        if isinstance(owner, str) and getattr(value, "__name__", "") in ("format", "format_map") \
                and _WIDE_FORMAT.search(owner):
            def refused(*_args, **_kwargs):
                raise SecurityError("format width is too large")

            return refused
        return super().wrap_str_format(value)

    def call_binop(self, context, operator_: str, left, right):
        if operator_ == "%":
            if isinstance(left, str) and _WIDE_FORMAT.search(left):
                raise SecurityError("format width is too large")
            return super().call_binop(context, operator_, left, right)
        if operator_ == "**":
            if isinstance(right, (int, float)) and abs(right) > 64:
                raise SecurityError(f"exponent {right} is too large")
            if isinstance(left, (int, float)) and abs(left) > MAX_NUMBER:
                raise SecurityError("base of a power is too large")
            return operator.pow(left, right)
        seq, n = (left, right) if isinstance(right, int) else (right, left)
        if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > self.max_chars:
            raise SecurityError(f"repetition would make {len(seq) * n} items, limit {self.max_chars}")
        return operator.mul(left, right)

    def is_safe_attribute(self, obj, attr, value) -> bool:
        return not attr.startswith("__") and super().is_safe_attribute(obj, attr, value)


_ROW_RNG: contextvars.ContextVar[random.Random] = contextvars.ContextVar("tuneline_row_rng")


@pass_context  # never constant-folded at compile time: `['a', 'b'] | choice` must draw per row
def _choice(_context, seq):
    # promptsource's `choice` filter is unseeded; ours draws from the rendering row's seeded RNG
    rng = _ROW_RNG.get(None) or random.Random(0)
    return rng.choice(list(seq))


def make_env(max_chars: int = MAX_RENDER_CHARS) -> BoundedSandbox:
    """A sandbox with promptsource's extra filters (`choice` is seeded per row, see render_promptsource)."""
    env = BoundedSandbox(max_chars=max_chars)
    env.filters["choice"] = _choice
    # Jinja's own `random` filter and `lipsum` global are unseeded: a template using them
    # would render differently on every run (and break content-keyed caching).
    env.filters["random"] = _choice
    env.globals.pop("lipsum", None)
    env.filters["most_frequent"] = lambda seq: max(set(seq), key=list(seq).count) if seq else ""
    return env


@functools.lru_cache(maxsize=4096)
def compiled(source: str, max_chars: int = MAX_RENDER_CHARS):
    """A template compiled once per (source, bound): compiling dominates rendering otherwise."""
    return _env(max_chars).from_string(source)


@functools.lru_cache(maxsize=8)
def _env(max_chars: int) -> BoundedSandbox:
    return make_env(max_chars)


def render_bounded(template, variables: dict, max_chars: int, name: str) -> str:
    """Render chunk by chunk, stopping as soon as the output passes `max_chars`."""
    out, size = [], 0
    for chunk in template.generate(**variables):
        size += len(chunk)
        if size > max_chars:
            raise RenderError("render_too_long", f"template {name!r}: output exceeds {max_chars} characters")
        out.append(chunk)
    return "".join(out)


# -- promptsource templates.yaml ------------------------------------------------------------
class _PromptsourceLoader(yaml.SafeLoader):
    """SafeLoader that reads `!Template` / `!TemplateMetadata` objects as plain mappings."""


def _mapping(loader: yaml.SafeLoader, node: yaml.Node) -> dict:
    return loader.construct_mapping(node, deep=True)


_PromptsourceLoader.add_constructor("!Template", _mapping)
_PromptsourceLoader.add_constructor("!TemplateMetadata", _mapping)


@dataclass(frozen=True)
class PSTemplate:
    """One promptsource template."""

    id: str
    name: str
    jinja: str
    answer_choices: str | None
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PSCollection:
    dataset: str
    subset: str | None
    templates: tuple[PSTemplate, ...]

    @property
    def dataset_name(self) -> str:
        return f"{self.dataset}/{self.subset}" if self.subset else self.dataset


def load_promptsource(path: str | Path) -> PSCollection:
    """Parse and check a promptsource templates.yaml; errors name the file and template."""
    path = Path(path)
    try:
        data = yaml.load(path.read_text(encoding="utf-8-sig"), Loader=_PromptsourceLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise RecipeError(f"{path}: cannot read promptsource templates: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("templates"), dict):
        raise RecipeError(f"{path}: expected a mapping with `dataset` and `templates`")
    env = make_env()
    out = []
    for key, t in data["templates"].items():
        if not isinstance(t, dict) or not isinstance(t.get("jinja"), str):
            raise RecipeError(f"{path}: template {key!r}: expected a !Template with a `jinja` string")
        name = str(t.get("name") or key)
        choices = t.get("answer_choices")
        for what, src in (("jinja", t["jinja"]), ("answer_choices", choices or "")):
            if "__" in src:
                raise RecipeError(f"{path}: template {name!r}: `__` names are not allowed in {what}")
            try:
                env.from_string(src)
            except TemplateError as exc:
                raise RecipeError(f"{path}: template {name!r}: {what} is not valid Jinja: {exc}") from None
        out.append(PSTemplate(id=str(t.get("id") or key), name=name, jinja=t["jinja"],
                              answer_choices=choices, metadata=dict(t.get("metadata") or {})))
    names = [t.name for t in out]
    if len(set(names)) != len(names):
        raise RecipeError(f"{path}: template names repeat: {sorted({n for n in names if names.count(n) > 1})}")
    return PSCollection(dataset=str(data.get("dataset", path.parent.name)), subset=data.get("subset"),
                        templates=tuple(sorted(out, key=lambda t: t.name)))


def render_promptsource(t: PSTemplate, row: dict, where: str, rng: random.Random,
                        max_chars: int = MAX_RENDER_CHARS) -> tuple[str, str, list[str]]:
    """(prompt, target, answer_choices) of template `t` on `row`; RenderError names template and row.

    `rng` feeds the `choice` filter, so a rendering is a function of the row and its seed.
    """
    variables = dict(row)
    token = _ROW_RNG.set(rng)
    steps = _RANGE_STEPS.set([0])
    try:
        choices: list[str] = []
        if t.answer_choices:
            rendered = render_bounded(compiled(t.answer_choices, max_chars), variables, max_chars, t.name)
            choices = [c.strip() for c in rendered.split(SEPARATOR)]
            variables["answer_choices"] = choices
        text = render_bounded(compiled(t.jinja, max_chars), variables, max_chars, t.name)
    except RenderError as exc:
        raise RenderError(exc.reason, f"{where}: {exc}") from None
    except (SecurityError, OverflowError) as exc:  # OverflowError: the sandbox's range bound, or a huge number
        raise RenderError("template_unsafe", f"{where}: template {t.name!r}: refused by the sandbox: {exc}") from None
    except (TemplateError, TypeError, ValueError, IndexError, KeyError, ZeroDivisionError) as exc:
        raise RenderError("template_error", f"{where}: template {t.name!r}: {type(exc).__name__}: {exc}") from None
    finally:
        _ROW_RNG.reset(token)
        _RANGE_STEPS.reset(steps)
    parts = text.split(SEPARATOR)
    prompt = parts[0].strip()
    target = SEPARATOR.join(parts[1:]).strip() if len(parts) > 1 else ""
    if not prompt or not target:
        raise RenderError("empty_render", f"{where}: template {t.name!r} renders no "
                                          f"{'prompt' if not prompt else 'target'} for this row")
    return prompt, target, choices


# -- FLAN CoT templates (the project's own wording) ----------------------------------------
#: (input, target) pairs per FLAN template type. Fields: {question} (without its options),
#: {options} (a "- a\n- b" block), {answer}, {rationale}. *_noopt omit the options.
COT_TEMPLATES: dict[str, list[tuple[str, str]]] = {
    "zs_opt": [
        ("{question}\nChoose from:\n{options}\nThink it through before answering.",
         "{rationale}\nSo the answer is: {answer}"),
        ("Answer the question below, explaining your reasoning first.\n\n{question}\n\nPossible answers:\n{options}",
         "Reasoning: {rationale}\nAnswer: {answer}"),
        ("Question: {question}\nCandidates:\n{options}\nWork step by step, then give the answer.",
         "{rationale} Therefore, the answer is {answer}."),
    ],
    "zs_noopt": [
        ("{question}\nThink it through before answering.", "{rationale}\nSo the answer is: {answer}"),
        ("Answer the question below, explaining your reasoning first.\n\n{question}",
         "Reasoning: {rationale}\nAnswer: {answer}"),
        ("Question: {question}\nWork step by step, then give the answer.",
         "{rationale} Therefore, the answer is {answer}."),
    ],
    "fs_opt": [
        ("Q: {question}\nChoices:\n{options}\nA: Let us reason.", "{rationale} The answer: {answer}."),
        ("Problem: {question}\nOptions:\n{options}\nSolution:", "{rationale}\nFinal answer: {answer}"),
    ],
    "fs_noopt": [
        ("Q: {question}\nA: Let us reason.", "{rationale} The answer: {answer}."),
        ("Problem: {question}\nSolution:", "{rationale}\nFinal answer: {answer}"),
    ],
}
TEMPLATE_TYPES = tuple(COT_TEMPLATES)
assert all(len(COT_TEMPLATES[f"{k}_opt"]) == len(COT_TEMPLATES[f"{k}_noopt"]) for k in ("zs", "fs"))
FEW_SHOT_JOINER = "\n\n"


def cot_template_type(template_type: str, options: list[str], answer: str) -> str:
    """The template type a CoT example is rendered with when `template_type` is asked for.

    An `_opt` type on a question without options becomes its `_noopt` twin, so no empty
    options block is shown; a `_noopt` type on an answer that is an option label (`(C)`,
    `Sentence A`: tasks.answers.parse_answer) becomes its `_opt` twin, because the answer
    names an option the prompt would not show. The twins have equal lengths, so an index
    stays valid.
    """
    if template_type.endswith("_opt") and not options:
        return template_type[: -len("_opt")] + "_noopt"
    if template_type.endswith("_noopt") and options and is_bare_label(answer):
        return template_type[: -len("_noopt")] + "_opt"
    return template_type


def render_cot(template_type: str, idx: int, question: str, options: list[str], answer: str,
               rationale: str) -> tuple[str, str]:
    """(input, target) of one CoT example in one template, of the type `cot_template_type` gives."""
    inp, tgt = COT_TEMPLATES[cot_template_type(template_type, options, answer)][idx]
    fields = {"question": question, "options": "\n".join(f"- {o}" for o in options),
              "answer": answer, "rationale": rationale}
    return inp.format(**fields), tgt.format(**fields)


# -- Dolly instruction templates ------------------------------------------------------------
#: Templates for rows with a context; {instruction}, {context}.
DOLLY_TEMPLATES: list[str] = [
    "{instruction}\n\nContext:\n{context}",
    "Read the passage and follow the instruction.\n\nPassage: {context}\n\nInstruction: {instruction}",
    "{context}\n\nUsing the text above: {instruction}",
    "Background information:\n{context}\n\nTask: {instruction}",
]
#: Template for rows without a context.
DOLLY_NO_CONTEXT = "{instruction}"


def render_dolly(instruction: str, context: str, rng: random.Random) -> tuple[str, str]:
    """(template_id, user text): a seeded pick among the context templates, or the no-context one."""
    if not context.strip():
        return "dolly:no_context", DOLLY_NO_CONTEXT.format(instruction=instruction.strip())
    i = rng.randrange(len(DOLLY_TEMPLATES))
    return f"dolly:context_{i}", DOLLY_TEMPLATES[i].format(instruction=instruction.strip(), context=context.strip())
