"""P3 records and promptsource rendering (sandboxed Jinja, seeded template choice)."""
import json
import random

import pytest

from tasks.errors import RecipeError
from tasks.ingest.registry import READERS
from tasks.recipe import parse_recipe
from tasks.render import PSTemplate, RenderError, render_promptsource

YAML = """dataset: toy
subset: s1
templates:
  aaaa-1: !Template
    answer_choices: no ||| yes
    id: aaaa-1
    jinja: "Is {{ word }} nice? ||| {{ answer_choices[label] }}"
    metadata: !TemplateMetadata
      choices_in_prompt: false
      original_task: true
    name: nice
    reference: ''
  aaaa-2: !Template
    answer_choices: null
    id: aaaa-2
    jinja: "{% if label == 1 %}Say {{ word }}. ||| {{ word }}{% endif %}"
    metadata: !TemplateMetadata
      choices_in_prompt: false
      original_task: false
    name: say
    reference: ''
  aaaa-3: !Template
    answer_choices: A ||| B
    id: aaaa-3
    jinja: "{{ word }} {{ [1, 2] | choice }} ||| {{ answer_choices[label] }}"
    metadata: !TemplateMetadata
      choices_in_prompt: true
      original_task: true
    name: pick
    reference: ''
"""


def _setup(tmp_path, rows, yaml_text=YAML, **src):
    (tmp_path / "t.yaml").write_text(yaml_text)
    p = tmp_path / "rows.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    rc = parse_recipe({"sources": [{"name": "ps", "format": "promptsource", "path": str(p), "templates": "t.yaml",
                                    **src}]}, tmp_path)
    return rc, rc.sources[0], p


def _convert(rc, s, p):
    reader = READERS[s.format]
    rows = [(str(p), i[1], i[2]) for i in reader.read(rc, s, str(p)) if i[0] == "row"]
    return list(reader.convert(rc, s, rows))


def test_p3_records(tmp_path):
    d = tmp_path / "toy_prompt"
    d.mkdir()
    p = d / "train.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in [
        {"inputs_pretokenized": "Good? ", "targets_pretokenized": "Yes ", "answer_choices": ["No", "Yes"],
         "inputs": [1, 2], "targets": [3]},
        {"inputs": "plain in", "targets": "plain out"},
        {"inputs": [1, 2], "targets": [3]},
        {"inputs_pretokenized": "x", "targets_pretokenized": "y", "answer_choices": "No"},
    ]))
    rc = parse_recipe({"sources": [{"name": "p3", "format": "p3", "path": str(p)}]}, tmp_path)
    out = _convert(rc, rc.sources[0], p)
    assert out[0]["messages"][1]["content"] == "Yes" and out[0]["answer_choices"] == ["No", "Yes"]
    assert out[0]["task"] == "toy_prompt"
    assert out[1]["messages"][0]["content"] == "plain in"
    assert [out[2]["reason"], out[3]["reason"]] == ["wrong_type", "wrong_type"]


@pytest.mark.parametrize("jinja", [
    "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %} ||| x",  # no output, 1e10 steps
    "{{ 'x'.center(10**9) }} ||| x",
    "{{ '%0999999999d' % 1 }} ||| x",
    "{{ '{:>999999999}'.format(1) }} ||| x",
    "{{ '%0999999999d' | format(1) }} ||| x",
    "{{ ((10**64)**64)**64 }} ||| x",
    "{{ range(10**9) | list | length }} ||| x",
])
def test_work_and_memory_without_output_are_bounded(jinja):
    # template_unsafe, not render_too_long: refused before the work or the allocation is done
    t = PSTemplate(id="t", name="evil", jinja=jinja, answer_choices=None)
    with pytest.raises(RenderError) as e:
        render_promptsource(t, {}, "rows.jsonl:3", random.Random(0))
    assert e.value.reason == "template_unsafe" and "rows.jsonl:3" in str(e.value)


def test_ordinary_loops_formats_and_numbers_still_render():
    t = PSTemplate(id="t", name="fine", answer_choices=None,
                   jinja="{% for i in range(3) %}{{ i }}{% endfor %} {{ 2 ** 10 }} {{ '{:,}'.format(pop) }} ||| "
                         "{{ '%d items' % 3 }}{{ '{:>4}'.format(1) }}")
    assert render_promptsource(t, {"pop": 83_000_000}, "rows.jsonl:1", random.Random(0))[:2] == (
        "012 1024 83,000,000", "3 items   1")


def test_random_filter_is_seeded_per_row_and_lipsum_is_gone():
    t = PSTemplate(id="t", name="pick", jinja="{{ ['a', 'b', 'c', 'd', 'e', 'f'] | random }} ||| x", answer_choices=None)
    picks = [render_promptsource(t, {}, "rows.jsonl:1", random.Random(seed))[0] for seed in range(12)]
    assert picks == [render_promptsource(t, {}, "rows.jsonl:1", random.Random(seed))[0] for seed in range(12)]
    assert len(set(picks)) > 1  # still random across rows
    lorem = PSTemplate(id="l", name="lorem", jinja="{{ lipsum() }} ||| x", answer_choices=None)
    with pytest.raises(RenderError):
        render_promptsource(lorem, {}, "rows.jsonl:2", random.Random(0))


def test_promptsource_render_and_seeded_pick(tmp_path):
    rows = [{"word": f"w{i}", "label": i % 2, "idx": i} for i in range(30)]
    rc, s, p = _setup(tmp_path, rows, templates_per_row=2, options={"id_field": "idx"})
    out = _convert(rc, s, p)
    recs = [r for r in out if "messages" in r]
    assert {r["task"] for r in recs} <= {"toy/s1:nice", "toy/s1:say", "toy/s1:pick"}
    nice = next(r for r in recs if r["task"] == "toy/s1:nice")
    i = int(nice["example_id"])
    assert nice["messages"] == [{"role": "user", "content": f"Is w{i} nice?"},
                                {"role": "assistant", "content": ["no", "yes"][i % 2]}]
    assert nice["answer_choices"] == ["no", "yes"] and nice["template_id"] == "aaaa-1"
    for r in recs:
        assert len(json.loads(r["meta"])["template_pick"]) == 2
    # "say" renders nothing for label 0: a reject naming template and row
    empties = [r for r in out if r.get("reason") == "empty_render"]
    assert empties and all("'say'" in r["detail"] and f"{p}:" in r["detail"] for r in empties)
    assert out == _convert(rc, s, p)  # the `choice` filter and the pick are seeded


def test_template_names_and_recipe_errors(tmp_path):
    rc, s, p = _setup(tmp_path, [{"word": "a", "label": 0}], template_names=["nice"], templates_per_row=3)
    (r,) = _convert(rc, s, p)
    assert r["task"] == "toy/s1:nice"
    with pytest.raises(RecipeError, match="no templates named"):
        _setup(tmp_path, [{"word": "a"}], template_names=["nope"])
    with pytest.raises(RecipeError, match=r"t\.yaml.*not valid Jinja"):
        _setup(tmp_path, [{"word": "a"}], yaml_text=YAML.replace("{{ word }} nice", "{{ word nice"))
    with pytest.raises(RecipeError, match="`__`"):
        _setup(tmp_path, [{"word": "a"}], yaml_text=YAML.replace("{{ word }} nice", "{{ ''.__class__ }} nice"))
    with pytest.raises(RecipeError, match="cannot read promptsource"):
        _setup(tmp_path, [{"word": "a"}], yaml_text="templates: [unclosed")


@pytest.mark.parametrize("jinja,reason", [
    ("{{ ''.__class__.__mro__ }} ||| x", "template_unsafe"),
    ("{{ word.__class__ }} ||| x", "template_unsafe"),
    ("{{ 'a' * 10000000 }} ||| x", "template_unsafe"),
    ("{% for i in range(90000) %}aaaa{% endfor %} ||| x", "render_too_long"),
    ("{{ missing }} ||| x", "template_error"),
    ("only a prompt", "empty_render"),
])
def test_sandbox_refuses(jinja, reason):
    t = PSTemplate(id="t", name="evil", jinja=jinja, answer_choices=None)
    with pytest.raises(RenderError) as e:
        render_promptsource(t, {"word": "w"}, "rows.jsonl:7", random.Random(0), max_chars=50_000)
    assert e.value.reason == reason
    assert "rows.jsonl:7" in str(e.value)


def test_p3_with_templates_is_promptsource(tmp_path):
    rc, s, p = _setup(tmp_path, [{"word": "a", "label": 1}], template_names=["nice"])
    rc2 = parse_recipe({"sources": [{**s.model_dump(), "format": "p3"}]}, tmp_path)
    assert _convert(rc, s, p) == _convert(rc2, rc2.sources[0], p)


# -- template attacks: reaching Python internals, or running without bound ---------------------
ATTACKS = [
    # Jinja's own globals lead to module globals (os, builtins) through __init__/__globals__
    "{{ cycler.__init__.__globals__.os }} ||| x",
    "{{ joiner.__init__.__globals__['os'] }} ||| x",
    "{{ namespace.__init__.__globals__.__builtins__ }} ||| x",
    "{{ lipsum.__globals__ }} ||| x",
    "{{ self.__init__.__globals__ }} ||| x",
    "{{ self._TemplateReference__context }} ||| x",
    "{% set ns = namespace() %}{{ ns._Namespace__attrs }} ||| x",
    # the `attr` filter, with the `__` spelled so that the load-time check cannot see it
    "{{ word|attr('__class__') }} ||| x",
    "{{ cycler|attr('_' ~ '_init_' ~ '_') }} ||| x",
    "{{ (cycler|attr('_' ~ '_init_' ~ '_')|attr('_' ~ '_globals_' ~ '_'))['os'] }} ||| x",
    "{{ self|attr('_TemplateReference__context') }} ||| x",
    "{{ [cycler]|map(attribute='__init__.__globals__')|list }} ||| x",
    # format strings reach attributes on their own: str.format, format_map, a `format` got via attr
    "{{ '{0.__class__}'.format(word) }} ||| x",
    "{{ '{0.__init__.__globals__[os]}'.format(cycler) }} ||| x",
    "{{ ('{0._' ~ '_class_' ~ '_}').format(word) }} ||| x",
    "{{ '{x.__class__.__mro__}'.format_map({'x': word}) }} ||| x",
    "{{ ('{0.__class__}'|attr('format'))(word) }} ||| x",
    "{{ '%s' % word.__class__ }} ||| x",
    "{{ '%s' % (word|attr('_' ~ '_class_' ~ '_')) }} ||| x",
    # unbounded work
    "{% for i in range(10**9) %}a{% endfor %} ||| x",
    "{{ range(10**9)|list|length }} ||| x",
    "{{ (10.0**64)**64 }} ||| x",
    "{% for i in range(99999) %}{{ word }}{% endfor %} ||| x",
]


@pytest.mark.parametrize("jinja", ATTACKS)
@pytest.mark.parametrize("field", ["jinja", "answer_choices"])
def test_template_attacks_are_refused(jinja, field):
    if field == "jinja":
        t = PSTemplate(id="t", name="evil", jinja=jinja, answer_choices=None)
    else:
        t = PSTemplate(id="t", name="evil", jinja="{{ word }} ||| {{ answer_choices[0] }}",
                       answer_choices=jinja.replace(" ||| x", " ||| y"))
    with pytest.raises(RenderError) as e:
        render_promptsource(t, {"word": "w"}, "rows.jsonl:7", random.Random(0), max_chars=50_000)
    assert e.value.reason in ("template_unsafe", "template_error", "render_too_long"), e.value
    assert "rows.jsonl:7" in str(e.value) and "template 'evil'" in str(e.value)


CANARY_ATTACKS = [
    "{{ cycler.__init__.__globals__.os.system('touch ' ~ canary) }}",
    "{{ joiner.__init__.__globals__['os'].popen('touch ' ~ canary).read() }}",
    "{{ namespace.__init__.__globals__.__builtins__.open(canary, 'w').write('x') }}",
    "{{ lipsum.__globals__['os'].system('touch ' ~ canary) }}",
    "{{ self.__init__.__globals__.__builtins__.open(canary, 'w') }}",
    "{{ self._TemplateReference__context.cycler.__init__.__globals__.os.system('touch ' ~ canary) }}",
    "{{ (cycler|attr('_' ~ '_init_' ~ '_')|attr('_' ~ '_globals_' ~ '_'))['os'].system('touch ' ~ canary) }}",
    "{{ (joiner|attr('_' ~ '_init_' ~ '_')|attr('_' ~ '_globals_' ~ '_'))['_' ~ '_builtins_' ~ '_']"
    ".open(canary, 'w') }}",
    "{{ open(canary, 'w') }}",
]


@pytest.mark.parametrize("jinja", CANARY_ATTACKS)
def test_template_never_creates_the_canary(tmp_path, monkeypatch, jinja):
    monkeypatch.chdir(tmp_path)
    canary = tmp_path / "CANARY"
    t = PSTemplate(id="t", name="evil", jinja=jinja + " ||| x", answer_choices=None)
    with pytest.raises(RenderError) as e:
        render_promptsource(t, {"word": "w", "canary": str(canary)}, "rows.jsonl:3", random.Random(0))
    assert "rows.jsonl:3" in str(e.value) and "template 'evil'" in str(e.value)
    assert not canary.exists()
    assert list(tmp_path.iterdir()) == []


def test_templates_file_attack_without_dunders_is_a_reject_and_creates_nothing(tmp_path):
    """Through the reader, from a templates.yaml: `__` spelled in pieces passes the load-time check,
    and the sandbox still refuses it for every row, as a reject naming the template and the row."""
    canary = tmp_path / "CANARY"
    evil = ("{{ (cycler|attr('_' ~ '_init_' ~ '_')|attr('_' ~ '_globals_' ~ '_'))['os']"
            ".system('touch ' ~ canary) }} ||| x")
    yaml_text = YAML.replace('"Is {{ word }} nice? ||| {{ answer_choices[label] }}"', json.dumps(evil))
    rc, s, p = _setup(tmp_path, [{"word": "a", "label": 1, "canary": str(canary)},
                                 {"word": "b", "label": 0, "canary": str(canary)}],
                      yaml_text=yaml_text, template_names=["nice"])
    out = _convert(rc, s, p)
    # (attr() of an unsafe name yields an undefined that refuses any further use: a template_error)
    assert [r["origin_row"] for r in out] == [1, 2] and "messages" not in out[0] and "messages" not in out[1]
    assert {r["reason"] for r in out} <= {"template_unsafe", "template_error"}
    assert all("'nice'" in r["detail"] and f"{p}:{r['origin_row']}" in r["detail"] for r in out)
    assert not canary.exists()
