"""The convert step: counts, several records per row, strict mode, determinism and caching."""
import hashlib
import json
import os
import random

import pytest

from tasks.convert import convert_shard
from tasks.errors import InputError
from tasks.ingest.common import canonical_json, fast_record_id, make_record, stable_hash
from tasks.ingest.run import ingest_file
from tasks.recipe import parse_recipe
from tasks.schema import record_id, turn_text
from tasks.store import file_sha256

YAML = """dataset: toy
templates:
  t1: !Template
    answer_choices: no ||| yes
    id: t1
    jinja: "Is {{ word }} nice? ||| {{ answer_choices[label] }}"
    metadata: !TemplateMetadata {choices_in_prompt: false, original_task: true}
    name: nice
  t2: !Template
    answer_choices: null
    id: t2
    jinja: "{% if label == 1 %}Say {{ word }}. ||| {{ word }}{% endif %}"
    metadata: !TemplateMetadata {choices_in_prompt: false, original_task: false}
    name: say
"""


def _setup(tmp_path, **kw):
    (tmp_path / "t.yaml").write_text(YAML)
    p = tmp_path / "rows.jsonl"
    rows = [{"word": f"w{i}", "label": i % 2} for i in range(10)] + [{"word": "nolabel"}]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    rd = parse_recipe({"sources": [{"name": "ps", "format": "promptsource", "path": str(p), "templates": "t.yaml",
                                    "templates_per_row": 2}], **kw}, tmp_path).model_dump(by_alias=True)
    return rd, p


def test_counts_with_several_records_per_row(tmp_path, store):
    rd, p = _setup(tmp_path)
    m = convert_shard(str(store.root), rd, ingest_file(str(store.root), rd, "ps", str(p)))
    s = m["stats"]
    # 5 rows with label 1 render both templates, 5 with label 0 only "nice", the unlabeled row none
    assert (s["rows_in"], s["rows_out"], s["rows_rejected"], s["records_out"]) == (11, 10, 1, 15)
    assert s["rows_in"] == s["rows_out"] + s["rows_rejected"]
    rej = store.read(m, "rejects").to_pylist()
    assert s["reject_rows"] == len(rej) == 7  # 5 empty "say" renderings + 2 failures of the unlabeled row
    assert {r["reason"] for r in rej if r["origin_row"] == 11} == {"template_error"}
    recs = store.read(m, "records").to_pylist()
    assert all(r["origin_file"] == str(p) and r["origin_row"] >= 1 for r in recs)
    assert len({r["record_id"] for r in recs}) == 15


def test_strict_convert_fails_on_first_bad_row(tmp_path, store):
    rd, p = _setup(tmp_path, on_error="strict")
    ing = ingest_file(str(store.root), rd, "ps", str(p))
    with pytest.raises(InputError) as e:
        convert_shard(str(store.root), rd, ing)
    # row 1's "say" renders nothing, but "nice" rendered it: only the unlabeled row 11 is bad input
    assert e.value.file == str(p) and e.value.row == 11 and e.value.reason == "template_error"
    assert f"{p}:11: template_error" in str(e.value)
    assert not list((store.root / "convert").glob("*/manifest.json"))


def test_deterministic_ids_and_parquet_bytes(tmp_path):
    from tasks.store import ArtifactStore

    rd, p = _setup(tmp_path)
    outs = []
    for run in ("a", "b"):
        st = ArtifactStore(tmp_path / run)
        m = convert_shard(str(st.root), rd, ingest_file(str(st.root), rd, "ps", str(p)))
        outs.append((st, m))
    (sa, ma), (sb, mb) = outs
    assert ma["key"] == mb["key"]
    assert sa.read(ma, "records").column("record_id").to_pylist() == sb.read(mb, "records").column("record_id").to_pylist()
    assert [file_sha256(x) for x in sa.paths(ma, "records")] == [file_sha256(x) for x in sb.paths(mb, "records")]
    again = convert_shard(str(sa.root), rd, ingest_file(str(sa.root), rd, "ps", str(p)))
    assert again["skipped"] and again["key"] == ma["key"]


def test_template_file_change_changes_convert_key(tmp_path, store):
    rd, p = _setup(tmp_path)
    ing = ingest_file(str(store.root), rd, "ps", str(p))
    a = convert_shard(str(store.root), rd, ing)
    (tmp_path / "t.yaml").write_text(YAML.replace("Is {{ word }} nice?", "Is {{ word }} pleasant?"))
    b = convert_shard(str(store.root), rd, ing)
    assert not b["skipped"] and a["key"] != b["key"]
    assert "pleasant" in store.read(b, "records").column("messages").to_pylist()[0][0]["content"]


def _three_sources(tmp_path):
    """Two promptsource sources with their own templates files, and a dolly source."""
    (tmp_path / "t.yaml").write_text(YAML)
    (tmp_path / "t2.yaml").write_text(YAML.replace("dataset: toy", "dataset: toy2"))
    rows = [{"word": f"w{i}", "label": i % 2} for i in range(10)]
    files = {"ps": tmp_path / "rows.jsonl", "ps2": tmp_path / "rows2.jsonl", "d": tmp_path / "dolly.jsonl"}
    for name in ("ps", "ps2"):
        files[name].write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    files["d"].write_text(json.dumps({"instruction": "Q", "context": "", "response": "A", "category": "c"}) + "\n")
    rd = parse_recipe({"sources": [
        {"name": "ps", "format": "promptsource", "path": str(files["ps"]), "templates": "t.yaml"},
        {"name": "ps2", "format": "promptsource", "path": str(files["ps2"]), "templates": "t2.yaml"},
        {"name": "d", "format": "dolly", "path": str(files["d"])},
    ]}, tmp_path).model_dump(by_alias=True)
    return rd, files


def _ingest_and_convert(store, rd, files) -> dict:
    out = {}
    for name, f in files.items():
        ing = ingest_file(str(store.root), rd, name, str(f))
        out[name] = (ing, convert_shard(str(store.root), rd, ing))
    return out


def test_template_text_change_recomputes_only_that_sources_convert(tmp_path, store):
    rd, files = _three_sources(tmp_path)
    first = _ingest_and_convert(store, rd, files)
    t = tmp_path / "t.yaml"
    st = t.stat()
    t.write_text(YAML.replace("Is {{ word }} nice?", "Is {{ word }} pleasant?"))
    # the same mtime, as same-second timestamps (tar, `cp -p`) or an edit within the clock tick leave it
    os.utime(t, ns=(st.st_atime_ns, st.st_mtime_ns))
    second = _ingest_and_convert(store, rd, files)
    for name in files:  # reading does not depend on templates: no ingest re-runs
        assert second[name][0]["skipped"] and second[name][0]["key"] == first[name][0]["key"], name
    for name in ("ps2", "d"):
        assert second[name][1]["skipped"] and second[name][1]["key"] == first[name][1]["key"], name
    ps = second["ps"][1]
    assert not ps["skipped"] and ps["key"] != first["ps"][1]["key"]
    prompts = [m[0]["content"] for m in store.read(ps, "records").column("messages").to_pylist()]
    assert any("pleasant" in x for x in prompts) and not any("nice" in x for x in prompts)
    assert _ingest_and_convert(store, rd, files)["ps"][1]["skipped"]


def test_version_bumps_change_the_keys_of_that_step(tmp_path, store, monkeypatch):
    from tasks import convert as convert_mod
    from tasks.ingest.registry import READERS
    from tasks.ingest import run as ingest_mod

    rd, files = _three_sources(tmp_path)
    first = _ingest_and_convert(store, rd, files)

    monkeypatch.setattr(convert_mod, "VERSION", convert_mod.VERSION + 1)
    second = _ingest_and_convert(store, rd, files)
    for name in files:
        assert second[name][0]["skipped"] and second[name][0]["key"] == first[name][0]["key"], name
        assert not second[name][1]["skipped"] and second[name][1]["key"] != first[name][1]["key"], name

    monkeypatch.setattr(ingest_mod, "VERSION", ingest_mod.VERSION + 1)
    third = _ingest_and_convert(store, rd, files)
    for name in files:  # a new ingest key is a new convert input
        assert not third[name][0]["skipped"] and third[name][0]["key"] != second[name][0]["key"], name
        assert not third[name][1]["skipped"] and third[name][1]["key"] != second[name][1]["key"], name

    monkeypatch.setattr(READERS["dolly"], "version", READERS["dolly"].version + 1)
    fourth = _ingest_and_convert(store, rd, files)
    for name in ("ps", "ps2"):
        assert fourth[name][0]["skipped"] and fourth[name][1]["skipped"], name
        assert (fourth[name][0]["key"], fourth[name][1]["key"]) == (third[name][0]["key"], third[name][1]["key"])
    assert not fourth["d"][0]["skipped"] and fourth["d"][0]["key"] != third["d"][0]["key"]
    assert not fourth["d"][1]["skipped"] and fourth["d"][1]["key"] != third["d"][1]["key"]


def test_fast_record_id_and_stable_hash_are_the_schema_ones():
    """make_record hashes plain turns through orjson: the same ids as tasks.schema.record_id for
    every kind of character (controls, quotes, backslashes, non-BMP), turns with extras and tools;
    a lone surrogate still raises what record_id raises."""

    rng = random.Random(7)
    alphabet = [chr(i) for i in range(0x250)] + ["\u2028", "\u2029", "\ufeff", "\U0001F600", "中", "\\", '"', "/"]

    def text():
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))

    for i in range(3000):
        msgs = [{"role": rng.choice(["user", "assistant", "system", text()]), "content": text()}
                for _ in range(rng.randint(0, 3))]
        if i % 5 == 0 and msgs:
            msgs[0]["content"] = None
        if i % 7 == 0 and msgs:
            msgs[-1]["reasoning"] = text()
        if i % 11 == 0 and msgs:
            msgs[-1]["tool_calls"] = [{"id": text(), "name": text(), "arguments": text()}]
        tools = canonical_json([{"name": text()}]) if i % 3 == 0 else None
        args = (text(), msgs, text(), text(), tools)
        assert fast_record_id(*args) == record_id(*args)
        rec = make_record(source=args[0], task="t", template_id=args[2], example_id=args[3], messages=msgs,
                          origin_file="f", origin_row=i)
        assert rec["n_chars"] == sum(len(turn_text(m)) for m in msgs)
        parts = (text(), i, [text(), {"k": text(), "a": None}], 1.5)
        assert stable_hash(*parts) == hashlib.sha256(canonical_json(list(parts)).encode()).hexdigest()
    bad = [{"role": "user", "content": "lone \ud800 surrogate"}]
    with pytest.raises(UnicodeEncodeError):
        record_id("s", bad)
    with pytest.raises(UnicodeEncodeError):
        fast_record_id("s", bad)
