"""Tests of tasks/dedup: signatures against datasketch, planted duplicates, keep rule, edge cases."""
from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest
from datasketch import MinHash

from tasks.dedup import dedup, minhash as mh, signatures, survivors
from tasks.dedup.signatures import fetch
from tasks.errors import TunelineError
from tasks.schema import RECORDS, record_id
from tasks.store import ArtifactStore

ALPHABET = "abcdefghijklmnopqrstuvwxyzéøß"


def rec(source, user, assistant="", *, template_id="", example_id="", row=0, messages=None, n_chars=None):
    msgs = messages if messages is not None else [
        {"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return {
        "record_id": record_id(source, msgs, template_id, example_id),
        "source": source, "task": "t", "template_id": template_id, "example_id": example_id,
        "messages": msgs, "answer_choices": [], "origin_file": f"{source}.jsonl", "origin_row": row,
        "n_turns": len(msgs), "n_chars": n_chars if n_chars is not None else sum(len(m["content"]) for m in msgs),
        "lang": "en", "meta": "{}",
    }


def convert_manifest(store, key, rows):
    w = store.begin("convert", key, label=key)
    w.write("records", RECORDS, rows)
    return w.commit()


def recipe(sources=("a", "b"), priorities=None, **dedup_cfg):
    priorities = priorities or {}
    return {
        "sources": [{"name": s, "format": "dolly", "path": f"{s}.jsonl", "priority": priorities.get(s, 0)}
                    for s in sources],
        "dedup": dedup_cfg,
    }


def run(tmp_path, shards, **kw):
    """Run signatures + dedup over shards (lists of records); return (manifest, tables)."""
    store = ArtifactStore(tmp_path)
    convs = [convert_manifest(store, f"c{i:03d}", rows) for i, rows in enumerate(shards)]
    rd = recipe(**kw)
    sigs = [signatures(str(tmp_path), rd, c) for c in convs]
    m = dedup(str(tmp_path), rd, convs, sigs)
    tables = {t: store.read(m, t).to_pylist() for t in ("dedup_removed", "dedup_clusters", "rejects")}
    tables["kept"] = [r for batch in survivors(store, m) for r in batch.to_pylist()]
    return m, tables


def words(rng, n, vocab=None):
    if vocab is not None:
        return [rng.choice(vocab) for _ in range(n)]
    return ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(3, 9))) for _ in range(n)]


def kept_ids(tables):
    return {r["record_id"] for r in tables["kept"]}


# -- signatures ---------------------------------------------------------------------------
def test_signatures_bit_identical_to_datasketch(tmp_path):
    rng = random.Random(5)
    vocab = words(rng, 300)
    rows = [rec("a", " ".join(words(rng, rng.randint(0, 80), vocab)), " ".join(words(rng, rng.randint(0, 30), vocab)),
                row=i) for i in range(60)]
    rows.append(rec("a", "今天天气很好我们一起去公园散步然后回家吃饭", "好的", row=60))
    rows.append(rec("a", "ＦＵＬＬ width  and\tTABS and more words here", row=61))
    store = ArtifactStore(tmp_path)
    conv = convert_manifest(store, "c0", rows)
    rd = recipe(num_perm=64, seed=7, verify="estimate")  # estimate: the signature is stored
    m = signatures(str(tmp_path), rd, conv)
    table = store.read(m, "dedup_signatures").to_pylist()
    # what exact verification uses: the shingle hashes dedup re-makes for the records it compares
    again = fetch(str(tmp_path), rd, conv, np.arange(len(rows)))
    ends = np.cumsum(again["counts"])
    assert m["stats"]["rows_in"] == m["stats"]["rows_out"] == len(rows) and m["stats"]["rows_rejected"] == 0
    assert "messages" not in store.read(m, "dedup_signatures").column_names  # no document text
    compared = 0
    for i, (row, sig) in enumerate(zip(rows, table)):
        text = mh.normalise("\n".join(t["content"] for t in row["messages"]))
        unit = mh.choose_unit(text, "word")
        shingles = mh.shingles_of(text, unit, 5)
        ref = MinHash(num_perm=64, seed=7, hashfunc=mh.shingle_hash)
        for s in shingles:
            ref.update(s)
        assert sig["n_shingles"] == len(shingles)
        if shingles:
            assert np.array_equal(np.frombuffer(sig["signature"], "<u4"), ref.hashvalues)
            compared += 1
        else:
            assert sig["signature"] is None
        assert again["hashes"][ends[i] - again["counts"][i]:ends[i]].tolist() == [mh.shingle_hash(s) for s in shingles]
        assert again["record_id"][i].as_py() == row["record_id"] and again["origin_row"][i].as_py() == row["origin_row"]
    assert compared > 50
    assert table[60]["unit"] == "char" and table[60]["n_shingles"] > 0


@pytest.mark.parametrize("mode", ["word", "char"])
def test_batch_normalisation_and_shingles_equal_the_scalar_definitions(mode):
    """The compiled batch path (ASCII in the loop, the rest through Python) against
    normalise / choose_unit / exact_key / shingle_hash one text at a time."""
    rng = random.Random(3)
    pieces = ["Word", "UPPER", "x", " ", "  ", "\t", "\n", "\r\n", "\x0b", "\x0c", "\x1c", "\x1f", "\x00", "~",
              "é", "ＦＵＬＬ", "ß", "İ", "\u00a0", "\u2003", "中文字", "ﬁ", "!", "7", "🙂", "ไทย"]
    texts = ["", " ", "\t\n", "plain ascii", " Lead and TRAIL \x1e", None, "a b c d e f g"]
    texts += ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 30))) for _ in range(600)]
    arr = pa.array(texts, pa.string())
    for batch, rows in [(arr, texts), (arr.slice(100, 250), texts[100:350])]:
        norm = mh.normalise_texts(batch, mode)
        ref = [mh.normalise(t or "") for t in rows]
        assert [norm.text(i) for i in range(len(norm))] == ref
        assert norm.units() == [mh.choose_unit(t, mode) for t in ref]
        assert norm.exact_keys() == [mh.exact_key(t) for t in ref]
        for k in (1, 3, 5):
            flat, counts = mh.shingle_hashes(norm, k)
            shingles = [mh.shingles_of(t, u, k) for t, u in zip(ref, norm.units())]
            assert counts.tolist() == [len(s) for s in shingles]
            assert flat.tolist() == [mh.shingle_hash(s) for ss in shingles for s in ss]


def test_ahead_of_time_kernels_equal_the_jit_kernels():
    """The extension module built from kernels.py (what the pipeline loads) against the same
    functions under numba's JIT, on random ASCII and non-ASCII text, word and character units."""
    from tasks.dedup import aot, kernels

    compiled = aot.load()
    assert compiled is not kernels, "the ahead-of-time build failed on this machine (see the log)"
    rng = random.Random(11)
    texts = [" ".join(words(rng, rng.randint(0, 60))) + rng.choice(["", " \t", "\n\n"]) for _ in range(300)]
    texts += ["", "   ", "中文字符没有空格的句子很长很长", "ÉCOLE  d'été", "A  b\tC " * 9, "x" * 40]
    a, b = mh.permutations(64, 3)
    for shingle in ("word", "char"):
        data, offsets, kind, repl, repl_offsets, _ = mh._prepare(pa.array(texts), shingle)
        for k, perms in ((1, 0), (5, 64)):
            outs = []
            for impl in (compiled, kernels):
                size, n = len(data) + len(repl) + 16, len(texts)
                bands = 8 if perms else 0
                bufs = (np.zeros(size, np.uint8), np.zeros(n + 1, np.int64), np.zeros(n, np.int64),
                        np.zeros(size, np.uint32), np.zeros((n, perms), np.uint32), np.zeros((n, bands), np.uint64))
                total = impl.sketch(data, offsets, kind, repl, repl_offsets, k, a[:perms], b[:perms], bands, 8, *bufs,
                                    np.zeros(size, np.int64), np.zeros(size, np.uint32), np.zeros(size, np.uint32))
                outs.append((total, bufs))
            assert outs[0][0] == outs[1][0]
            for x, y in zip(outs[0][1], outs[1][1]):
                assert np.array_equal(x, y)


def test_kernels_fall_back_to_jit_when_the_build_fails(monkeypatch, caplog):
    from tasks.dedup import aot, kernels

    def no_compiler(*_args, **_kwargs):
        raise OSError("no C compiler")

    monkeypatch.setattr(aot, "_loaded", None)
    monkeypatch.setattr(aot, "build", no_compiler)
    assert aot.load() is kernels
    assert "no ahead-of-time build (OSError: no C compiler); using numba JIT" in caplog.text
    monkeypatch.setattr(aot, "_loaded", None)
    monkeypatch.setenv("TUNELINE_DEDUP_KERNELS", "jit")
    assert aot.load() is kernels


def test_lsh_bands_and_rows_are_datasketchs():
    from datasketch.lsh import _optimal_param

    for num_perm in (16, 64, 128, 256):
        for threshold in (0.3, 0.5, 0.7, 0.8, 0.85, 0.9, 0.95):
            for weights in ((0.5, 0.5), (0.2, 0.8), (0.9, 0.1)):
                assert mh.lsh_params(threshold, num_perm, *weights) == _optimal_param(threshold, num_perm, *weights), (
                    threshold, num_perm, weights)


def test_unit_hash_definition():
    """The unit hash on its own: lengths across the 8-byte chunk boundaries, and its known values."""
    for n in range(1, 30):
        unit = "".join(chr(97 + (i * 7) % 26) for i in range(n))
        flat, counts = mh.shingle_hashes(mh.normalise_texts(pa.array([unit])), 1)
        assert counts.tolist() == [1]
        fold = ((0x811C9DC5 ^ mh.unit_hash(unit)) * 0x01000193) & 0xFFFFFFFF
        assert flat.tolist() == [fold] == [mh.shingle_hash((unit,))]
    vocab = set(words(random.Random(2), 20_000))
    assert len({mh.unit_hash(w) for w in vocab}) >= len(vocab) - 2  # 32 bits: ~0.05 collisions expected
    assert mh.unit_hash("a") != mh.unit_hash("a\0") and mh.unit_hash("abcdefgh") != mh.unit_hash("abcdefgh\0")


def test_vectorised_hash_equals_scalar_definition():
    rng = random.Random(1)
    texts = [mh.normalise(" ".join(words(rng, rng.randint(0, 20)))) for _ in range(50)]
    flat, counts = mh.shingle_hashes(mh.normalise_texts(pa.array(texts)), 3)
    expect = [mh.shingle_hash(s) for t in texts for s in mh.shingles_of(t, "word", 3)]
    assert flat.tolist() == expect
    assert counts.tolist() == [max(len(t.split()) - 2, 0) if t else 0 for t in texts]


# -- planted near duplicates ----------------------------------------------------------------
def _shingle_set(text):
    t = mh.normalise(text)
    return set(mh.shingles_of(t, "word", 5))


@pytest.mark.parametrize("verify", ["exact", "estimate"])
def test_planted_near_duplicates_recall_and_false_merges(tmp_path, verify):
    rng = random.Random(11)
    rows, pairs = [], []
    for p in range(400):
        base = words(rng, 150)
        variant = list(base)
        for pos in rng.sample(range(len(base)), rng.choice([1, 1, 2, 2, 3, 6, 10, 20, 40])):
            variant[pos] = "".join(rng.choice(ALPHABET) for _ in range(7))
        a, b = " ".join(base), " ".join(variant)
        sa, sb = _shingle_set(a), _shingle_set(b)
        pairs.append((len(sa & sb) / len(sa | sb), 2 * p, 2 * p + 1))
        rows += [rec("a", a, row=2 * p), rec("a", b, row=2 * p + 1)]
    m, tables = run(tmp_path, [rows[:400], rows[400:]], verify=verify)  # two shards
    kept = kept_ids(tables)
    ids = [r["record_id"] for r in rows]
    merged = lambda i, j: not (ids[i] in kept and ids[j] in kept)  # noqa: E731
    high = [merged(i, j) for jac, i, j in pairs if jac >= 0.9]
    low = [merged(i, j) for jac, i, j in pairs if jac < 0.5]
    assert len(high) >= 60 and len(low) >= 60
    assert sum(high) / len(high) >= 0.95
    assert sum(low) / len(low) <= 0.01
    assert m["stats"]["near_removed"] > 0 and m["stats"]["exact_removed"] == 0
    assert m["stats"]["bands"] * m["stats"]["rows"] <= 128
    for r in tables["dedup_clusters"]:
        if not r["is_kept"]:
            assert r["similarity"] >= 0.8 and r["reason"] == "near_duplicate"


# -- exact, short, empty, Chinese, huge -----------------------------------------------------
def test_exact_duplicates_after_normalisation(tmp_path):
    rows = [
        rec("a", "Hello   World, this is a test", "Fine.", row=0),
        rec("a", "hello world, THIS is a  test", "fine.", row=1),
        rec("a", "ＨＥＬＬＯ world, this is a test\n", "FINE.", row=2),  # fullwidth: NFKC
        rec("a", "Hello World, this is a different test", "Fine.", row=3),
    ]
    m, t = run(tmp_path, [rows])
    assert m["stats"]["exact_removed"] == 2 and m["stats"]["rows_out"] == 2
    kept = kept_ids(t)
    assert rows[3]["record_id"] in kept
    (survivor,) = kept & {r["record_id"] for r in rows[:3]}
    assert {r["reason"] for r in t["rejects"]} == {"exact_duplicate"}
    assert {r["related_id"] for r in t["rejects"]} == {survivor}
    assert {(r["origin_file"], r["origin_row"]) for r in t["rejects"]} <= {("a.jsonl", 0), ("a.jsonl", 1), ("a.jsonl", 2)}
    assert all(r["step"] == "dedup" for r in t["rejects"])


def test_short_texts_fall_back_to_exact(tmp_path):
    rows = [rec("a", "yes", row=0), rec("a", "Yes", row=1), rec("a", "yes!", row=2), rec("a", "no", row=3)]
    m, t = run(tmp_path, [rows])
    assert m["stats"]["rows_rejected"] == 1 and t["rejects"][0]["reason"] == "exact_duplicate"
    assert {rows[2]["record_id"], rows[3]["record_id"]} <= kept_ids(t)


def test_short_and_long_texts_in_one_shard(tmp_path):
    """Short texts have no band keys (null); the long ones of the same shard are still compared."""
    long_text = "the quick brown fox jumps over the lazy dog near the river bank today and tomorrow"
    rows = [rec("a", "yes", row=0), rec("a", long_text, row=1), rec("a", long_text + " again", row=2),
            rec("a", "no", row=3)]
    m, t = run(tmp_path, [rows])
    assert m["stats"]["near_removed"] == 1 and m["stats"]["rows_out"] == 3
    assert {rows[0]["record_id"], rows[3]["record_id"]} <= kept_ids(t)


def test_chinese_near_duplicates_use_character_shingles(tmp_path):
    base = "机器学习是人工智能的一个分支它使计算机能够在没有明确编程的情况下从数据中学习并做出预测或决策这种方法在图像识别语音处理和自然语言理解等领域取得了巨大成功"
    near = base.replace("巨大", "很大")
    other = "今天天气很好我们一起去公园散步然后回家吃饭晚上看电影周末再去爬山和朋友聚会喝茶聊天讨论最近读过的书籍和旅行计划以及工作中的新项目进展"
    rows = [rec("a", base, row=0), rec("a", near, row=1), rec("a", other, row=2)]
    m, t = run(tmp_path, [rows])
    assert m["stats"]["near_removed"] == 1
    assert rows[2]["record_id"] in kept_ids(t)
    assert t["rejects"][0]["reason"] == "near_duplicate"


def test_empty_conversations_and_empty_projection_are_kept(tmp_path):
    rows = [
        rec("a", "", messages=[], row=0),
        rec("a", "", messages=[], row=1),
        rec("a", "", messages=[{"role": "assistant", "content": "only an answer here"}], row=2),
        rec("a", "", messages=[{"role": "assistant", "content": "only an answer here!"}], row=3),
    ]
    m, t = run(tmp_path, [rows], projection="prompt")
    assert m["stats"]["rows_out"] == 4 and m["stats"]["rows_rejected"] == 0
    assert t["dedup_clusters"] == [] and t["rejects"] == []


def test_one_megabyte_record(tmp_path):
    rng = random.Random(3)
    big = " ".join(words(rng, 150_000))
    assert len(big) > 1_000_000
    near = big[:-200] + " tail words changed here"
    rows = [rec("a", big, row=0), rec("a", near, row=1), rec("a", "small record of several words here", row=2)]
    m, t = run(tmp_path, [rows])
    assert m["stats"]["near_removed"] == 1 and m["stats"]["rows_out"] == 2


# -- scope, keep rule, template variants -----------------------------------------------------
TEXT = "the quick brown fox jumps over the lazy dog near the river bank today"


@pytest.mark.parametrize("scope,removed", [("global", 1), ("within_source", 0)])
def test_identical_records_in_different_sources(tmp_path, scope, removed):
    rows_a = [rec("a", TEXT, "ok", row=0)]
    rows_b = [rec("b", TEXT, "ok", row=0)]
    m, t = run(tmp_path, [rows_a, rows_b], scope=scope, priorities={"b": 1})
    assert m["stats"]["rows_rejected"] == removed
    if removed:
        assert kept_ids(t) == {rows_b[0]["record_id"]}  # higher priority wins
        assert t["rejects"][0]["source"] == "a" and t["rejects"][0]["related_id"] == rows_b[0]["record_id"]
        assert m["stats"]["per_source"]["a"]["exact"] == 1


def test_keep_rule_order(tmp_path):
    two_turns = [{"role": "user", "content": "the quick brown fox jumps over"},
                 {"role": "assistant", "content": "the lazy dog near the river bank today"}]
    one_turn = [{"role": "user", "content": TEXT}]
    shards = [
        # priority beats turns
        [rec("a", "", messages=two_turns, row=0), rec("b", "", messages=one_turn, row=0)],
    ]
    m, t = run(tmp_path / "p", shards, priorities={"b": 2})
    assert kept_ids(t) == {shards[0][1]["record_id"]}
    # turns beat chars
    rows = [rec("a", "", messages=one_turn, row=0, n_chars=999), rec("a", "", messages=two_turns, row=1)]
    m, t = run(tmp_path / "t", [rows])
    assert kept_ids(t) == {rows[1]["record_id"]}
    # chars beat record_id
    rows = [rec("a", TEXT, row=0, n_chars=10), rec("a", TEXT.upper(), row=1, n_chars=20)]
    m, t = run(tmp_path / "c", [rows])
    assert kept_ids(t) == {rows[1]["record_id"]}
    # then the smallest record_id
    rows = [rec("a", TEXT, row=0, n_chars=10), rec("a", TEXT.upper(), row=1, n_chars=10)]
    m, t = run(tmp_path / "r", [rows])
    assert kept_ids(t) == {min(r["record_id"] for r in rows)}


@pytest.mark.parametrize("mode", ["keep", "dedup"])
def test_template_variants(tmp_path, mode):
    rows = [
        rec("a", TEXT, template_id="t1", example_id="ex1", row=0),
        rec("a", TEXT, template_id="t2", example_id="ex1", row=1),  # identical rendering, other template
        rec("a", TEXT + " please", template_id="t3", example_id="ex1", row=2),  # near variant
        rec("a", TEXT, template_id="t1", example_id="ex9", row=3),  # another example: a real duplicate
    ]
    m, t = run(tmp_path, [rows], template_variants=mode)
    kept = kept_ids(t)
    if mode == "keep":
        # no record is removed as a duplicate of its own template variant
        by_id = {r["record_id"]: r for r in rows}
        for rj in t["rejects"]:
            a, b = by_id[rj["record_id"]], by_id[rj["related_id"]]
            assert not (a["example_id"] == b["example_id"] and a["template_id"] != b["template_id"])
        assert kept == {r["record_id"] for r in rows[:3]}  # the three renderings of ex1 stay
        assert [r["record_id"] for r in t["rejects"]] == [rows[3]["record_id"]]
    else:
        assert kept == {rows[2]["record_id"]}  # the longest rendering
        assert m["stats"]["near_removed"] == 3  # reasons are relative to the kept record


# -- accounting, determinism, pass-through -------------------------------------------------------
def _mixed_rows(seed):
    rng = random.Random(seed)
    vocab = words(rng, 400)
    rows = []
    for i in range(150):
        text = " ".join(words(rng, 40, vocab))
        rows.append(rec(rng.choice("ab"), text, row=i))
        if i % 3 == 0:
            rows.append(rec(rng.choice("ab"), text.upper(), row=1000 + i))
        if i % 4 == 0:
            rows.append(rec(rng.choice("ab"), text + " extra", row=2000 + i))
    return rows


def test_rows_in_equals_out_plus_rejected_and_lineage(tmp_path):
    rows = _mixed_rows(2)
    m, t = run(tmp_path, [rows[:100], rows[100:]])
    s = m["stats"]
    assert s["rows_in"] == len(rows) == s["rows_out"] + s["rows_rejected"]
    assert len(t["kept"]) == s["rows_out"] and len(t["rejects"]) == s["rows_rejected"]
    assert s["rows_rejected"] == s["exact_removed"] + s["near_removed"] > 0
    not_kept = [c for c in t["dedup_clusters"] if not c["is_kept"]]
    assert {c["record_id"] for c in not_kept} == {r["record_id"] for r in t["rejects"]}
    assert {c["kept_record_id"] for c in not_kept} <= kept_ids(t)
    assert len({c["cluster_id"] for c in t["dedup_clusters"]}) == s["clusters"]
    assert "| a |" in s["report_markdown"] and "dedup rate" in s["report_markdown"]
    for k in ("bands", "rows", "num_perm", "threshold", "shingle", "seed"):
        assert k in s


def test_deterministic_across_runs(tmp_path):
    rows = _mixed_rows(4)
    _, t1 = run(tmp_path / "one", [rows[:120], rows[120:]])
    _, t2 = run(tmp_path / "two", [rows[:120], rows[120:]])
    assert t1 == t2


def test_cached_rerun_is_skipped(tmp_path):
    store = ArtifactStore(tmp_path)
    conv = convert_manifest(store, "c0", _mixed_rows(1))
    sig = signatures(str(tmp_path), recipe(), conv)
    first = dedup(str(tmp_path), recipe(), [conv], [sig])
    again = dedup(str(tmp_path), recipe(), [conv], [signatures(str(tmp_path), recipe(), conv)])
    assert again["skipped"] and again["key"] == first["key"]


def test_disabled_passes_everything_through(tmp_path):
    rows = _mixed_rows(3)
    m, t = run(tmp_path, [rows], enabled=False)
    assert m["stats"]["rows_out"] == len(rows) and t["rejects"] == [] and t["dedup_clusters"] == []
    assert [r["record_id"] for r in t["kept"]] == [r["record_id"] for r in rows]


def test_survivors_drop_removed_rows_by_position(tmp_path):
    """Two identical records of one source share a record_id: dedup removes one of them by its
    position, and the survivors keep the other, in convert order, across shards."""
    rows = _mixed_rows(5)
    twin = rec("a", TEXT, "ok", row=7)
    shards = [rows[:90] + [twin], [twin] + rows[90:]]
    m, t = run(tmp_path, shards)
    store = ArtifactStore(tmp_path)
    removed = {(r["shard"], r["row"]) for r in t["dedup_removed"]}
    assert len(removed) == m["stats"]["rows_rejected"] == len(t["rejects"])
    expected = [r for s, shard in enumerate(shards) for i, r in enumerate(shard) if (s, i) not in removed]
    assert [r["record_id"] for r in t["kept"]] == [r["record_id"] for r in expected]
    assert sum(r["record_id"] == twin["record_id"] for r in t["kept"]) == 1
    for r in t["dedup_removed"]:  # each entry names the record at that position
        assert shards[r["shard"]][r["row"]]["record_id"] == r["record_id"]
    assert [b.num_columns for b in survivors(store, m, ["record_id"])] == [1, 1]


def test_survivors_name_a_convert_shard_that_is_gone(tmp_path):
    m, _ = run(tmp_path, [_mixed_rows(6)])
    import shutil

    shutil.rmtree(tmp_path / "convert" / "c000")
    with pytest.raises(TunelineError, match=r"reads convert/c000, which is gone .*run the pipeline again from convert"):
        list(survivors(ArtifactStore(tmp_path), m))


def test_band_keys_equal_for_equal_bands():
    sig = np.array([[1, 2, 3, 4], [1, 2, 9, 9], [5, 2, 3, 4]], np.uint32)
    keys = mh.band_keys(sig, 2, 2)
    assert keys[0, 0] == keys[1, 0] and keys[0, 1] != keys[1, 1] and keys[0, 1] == keys[2, 1]
    assert keys[0, 0] != keys[2, 0]
    assert pa.array(keys[:, 0]).type == pa.uint64()
