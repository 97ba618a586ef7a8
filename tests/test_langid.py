"""Language identification: the same labels on one core and on the worker pool, batched and one by one."""
import numpy as np

from tasks import langid

TEXTS = [
    "The weather is lovely today and we are going for a long walk in the park.",
    "Das Wetter ist heute schön und wir machen einen langen Spaziergang im Park.",
    "Il fait beau aujourd'hui et nous allons faire une longue promenade dans le parc.",
    "Hi",
    None,
]


def test_pool_and_single_process_agree(monkeypatch):
    serial = langid.languages(TEXTS * 3, min_chars=20, max_chars=160)
    assert serial[:5] == ["en", "de", "fr", "und", "und"]
    monkeypatch.setattr(langid, "PARALLEL_MIN", 2)
    monkeypatch.setattr(langid, "CHUNK", 1)
    assert langid.languages(TEXTS * 3, min_chars=20, max_chars=160) == serial


def _texts(n: int, seed: int = 3) -> list[str]:
    """Sentences of words from several languages and scripts, in mixed case, with digits,
    punctuation and emoji, 5 to 300 characters."""
    import random

    words = ("the weather lovely park walk question answer Wetter heute schön Spaziergang beau aujourd'hui "
             "promenade tiempo hoy paseo 今天 天气 公园 散步 сегодня погода парк гулять اليوم الطقس حديقة "
             "今日 天気 公園 散歩 오늘 날씨 공원 산책 ημέρα καιρός πάρκο aujourd 123 4.5 !!! ?? 🙂 — … «» ß ğ ı İ").split()
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 40)))[: rng.randint(5, 300)]
        out.append(text.upper() if rng.random() < 0.1 else text)
    return out


def test_batched_labels_are_py3langids():
    texts = _texts(3000) + TEXTS[:4] + ["", " ", "???", "12345", "a"]
    assert langid.classify(texts) == langid.classify_each(texts)


def test_unsure_texts_go_to_py3langid(monkeypatch):
    """A text whose two best languages are within the error bound (here: every text, none has
    a feature) is classified by py3langid itself; a batch whose spot check disagrees (here: scores
    from zeroed features) is classified by py3langid whole. The labels stay py3langid's."""
    from scipy import sparse

    texts = _texts(300, seed=5)
    batched = langid._batched()
    real = batched.features
    calls = []
    each = langid.classify_each
    monkeypatch.setattr(langid, "classify_each", lambda t: calls.append(len(t)) or each(t))
    monkeypatch.setattr(batched, "features", lambda encoded: sparse.csr_matrix(real(encoded).shape, dtype=np.float32))
    assert langid.classify(texts) == each(texts)
    assert calls[0] == len(texts)  # all unsure
    calls.clear()
    monkeypatch.setattr(batched, "features", lambda encoded: real(encoded) * 0)  # sure, and wrong
    assert langid.classify(texts) == each(texts)
    assert calls == [0, langid.SPOT_CHECK, len(texts)]  # no unsure text, the spot check, then all
