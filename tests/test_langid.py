"""Language identification: the same labels on one core and on the worker pool."""
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
