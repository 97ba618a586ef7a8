"""Text projection, normalisation, shingle hashing and MinHash: the scalar definitions below
(the tests hold datasketch and the batch versions to them) and the batch versions, which run
compiled loops over a batch's bytes (`kernels.py`, loaded through `aot.py`).

Definitions:

* **Normalised text**: Unicode NFKC, then `str.casefold()`, then every run of
  whitespace folded to one space and the ends stripped.
* **Units**: the whitespace tokens of the normalised text (`word`), or its
  characters with whitespace removed (`char`). A text is shingled by characters
  when the recipe says `shingle: char`, or when it is written in scripts without
  spaces between words (Chinese, Japanese, Thai, ...): at least `NO_SPACE_SHARE`
  of its non-space characters are in those scripts.
* **Shingles**: every run of `k` consecutive units (k = `shingle_size`). A text
  with fewer than `k` units has no shingles: it is matched exactly only.
* **Shingle hash** `h` (`shingle_hash`): the per-unit hash is
  `xxh32(unit.encode("utf-8"), seed=0)`; the k unit hashes are folded FNV-1a
  style, ``acc = 0x811C9DC5; acc = ((acc ^ u) * 0x01000193) mod 2**32``.
  It is a 32-bit integer, so `datasketch.MinHash(num_perm, seed, hashfunc=shingle_hash)`
  updated with the shingle tuples gives exactly the signatures `sketch` computes.
* **MinHash**: datasketch 2.x's default `affine32` scheme: the shingle hash is
  pre-mixed with the MurmurHash3 32-bit finalizer, then permutation k is
  ``a_k * x + b_k mod 2**32`` (uint32 wrap-around), a_k, b_k drawn exactly as
  datasketch draws them from `np.random.RandomState(seed)`.
"""
from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from tasks.dedup import aot

#: Scripts written without spaces between words: CJK ideographs, kana, Thai, Lao, Myanmar, Khmer.
_NO_SPACE_SCRIPT = re.compile(
    "[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]"
)
NO_SPACE_SHARE = 0.3
_M32 = 0xFFFFFFFF

PROJECTION_ROLES = {
    "prompt": ("user",),
    "response": ("assistant",),
    "conversation": None,  # every turn
}


# -- projection and normalisation ---------------------------------------------------
def project_arrow(messages: pa.Array, projection: str) -> pa.Array:
    """The projected text of every record: the chosen turns' contents joined by newlines."""
    messages = messages.combine_chunks() if isinstance(messages, pa.ChunkedArray) else messages
    n = len(messages)
    offsets = np.asarray(messages.offsets)
    flat = messages.flatten()  # respects slicing of `messages`
    parent = np.repeat(np.arange(n), np.diff(offsets))
    content = flat.field("content")
    content = pc.fill_null(content, "")
    roles = PROJECTION_ROLES[projection]
    if roles is not None:
        mask = np.asarray(pc.is_in(flat.field("role"), pa.array(roles)).fill_null(False))
        content = content.filter(pa.array(mask))
        parent = parent[mask]
    new_offsets = np.searchsorted(parent, np.arange(n + 1)).astype(np.int32)
    lists = pa.ListArray.from_arrays(pa.array(new_offsets), content)
    return pc.binary_join(lists, "\n")


def project(messages: pa.Array, projection: str) -> list[str]:
    return project_arrow(messages, projection).to_pylist()


def normalise(text: str) -> str:
    """NFKC, casefold, whitespace folded to single spaces."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def exact_key(normalised: str) -> str | None:
    """128-bit key of a normalised text; None for an empty text (never matched)."""
    return xxhash.xxh3_128_hexdigest(normalised.encode("utf-8")) if normalised else None


# -- the shingle hash, scalar (the reference datasketch is given) --------------------
def unit_hash(unit: str) -> int:
    return xxhash.xxh32_intdigest(unit.encode("utf-8"), seed=0)


def shingle_hash(shingle: tuple[str, ...]) -> int:
    """Tuneline's 32-bit shingle hash `h` of one shingle (a tuple of units)."""
    acc = 0x811C9DC5
    for u in shingle:
        acc = ((acc ^ unit_hash(u)) * 0x01000193) & _M32
    return acc


def units_of(normalised: str, unit: str) -> list[str]:
    return normalised.split(" ") if unit == "word" and normalised else [c for c in normalised if c != " "]


def choose_unit(normalised: str, mode: str) -> str:
    """`word` or `char` for one normalised text (see module docstring)."""
    if mode == "char":
        return "char"
    if normalised.isascii():  # the common case, without a regex pass
        return "word"
    n_no_space = len(_NO_SPACE_SCRIPT.findall(normalised))
    return "char" if n_no_space >= NO_SPACE_SHARE * (len(normalised) - normalised.count(" ")) else "word"


def shingles_of(normalised: str, unit: str, k: int) -> list[tuple[str, ...]]:
    """The shingles (tuples of k units) of a text, in order, duplicates included."""
    units = units_of(normalised, unit)
    return [tuple(units[i : i + k]) for i in range(len(units) - k + 1)]


# -- a batch at once (tasks/dedup/kernels.py) ------------------------------------------
@dataclass
class Normalised:
    """A batch of normalised texts as one UTF-8 buffer: text i is data[offsets[i]:offsets[i+1]]."""

    data: np.ndarray  # uint8
    offsets: np.ndarray  # int64, len n + 1
    by_char: np.ndarray  # bool: shingled by characters (see choose_unit)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def text(self, i: int) -> str:
        return self.data[self.offsets[i] : self.offsets[i + 1]].tobytes().decode("utf-8")

    def exact_keys(self) -> list[str | None]:
        """`exact_key` of every text, hashed straight from the buffer."""
        view, off = memoryview(self.data), self.offsets.tolist()
        return [xxhash.xxh3_128_hexdigest(view[a:b]) if b > a else None for a, b in zip(off, off[1:])]

    def units(self) -> list[str]:
        return np.where(self.by_char, "char", "word").tolist()


def normalise_texts(texts: pa.Array, shingle: str = "word") -> Normalised:
    """`normalise` and `choose_unit` of every text of an Arrow string array. ASCII texts (the
    common case) are normalised by a compiled loop over their bytes; the others in Python."""
    kernels = aot.load()
    texts = texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts
    texts = pc.fill_null(texts.cast(pa.large_string()), "")
    n = len(texts)
    is_ascii = pc.string_is_ascii(texts).to_numpy(zero_copy_only=False).astype(bool)
    others = [normalise(texts[int(i)].as_py()) for i in np.flatnonzero(~is_ascii)]
    encoded = [t.encode("utf-8") for t in others]
    repl_offsets = np.zeros(len(encoded) + 1, np.int64)
    repl_offsets[1:] = np.cumsum([len(e) for e in encoded])
    offsets_buf, data_buf = texts.buffers()[1], texts.buffers()[2]
    offsets = np.frombuffer(offsets_buf, np.int64)[texts.offset : texts.offset + n + 1]
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None and data_buf.size else np.zeros(1, np.uint8)
    out, out_offsets = kernels.normalise(data, offsets, is_ascii, np.frombuffer(b"".join(encoded) or b"\0", np.uint8),
                                         repl_offsets)
    by_char = np.full(n, shingle == "char")
    if shingle != "char":
        by_char[~is_ascii] = [choose_unit(t, shingle) == "char" for t in others]
    return Normalised(out, out_offsets, by_char)


def normalise_batch(messages: pa.Array, projection: str, shingle: str = "word") -> Normalised:
    return normalise_texts(project_arrow(messages, projection), shingle)


def shingle_hashes(texts: Normalised, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(flat uint32 shingle hashes in text order, shingles per text): `shingle_hash` of every
    shingle of every text."""
    hashes, counts, _, _ = sketch(texts, k, 0, 1, 0, 1)
    return hashes, counts


def sketch(texts: Normalised, k: int, num_perm: int, seed: int, bands: int, rows: int):
    """(flat shingle hashes, shingles per text, signatures len(texts) x num_perm uint32, band
    keys len(texts) x bands uint64) of a batch, by one compiled loop over its texts. Rows of
    texts without shingles are all 0xFFFFFFFF (datasketch's empty MinHash)."""
    kernels = aot.load()
    a, b = permutations(num_perm, seed) if num_perm else (np.empty(0, np.uint32), np.empty(0, np.uint32))
    return kernels.sketch(texts.data, texts.offsets, texts.by_char, k, a, b, bands, rows)


# -- MinHash ------------------------------------------------------------------------
@functools.lru_cache(maxsize=16)
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 permutation parameters (a odd, b), same draws, same order."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


# -- LSH bands ------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def lsh_params(threshold: float, num_perm: int, fp_weight: float, fn_weight: float) -> tuple[int, int]:
    """(bands, rows) from datasketch's own optimiser (MinHashLSH uses the same function)."""
    from datasketch.lsh import _optimal_param

    return _optimal_param(threshold, num_perm, fp_weight, fn_weight)


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per band (n x bands uint64): a hash of the band's `rows` values,
    ``acc = 0xCBF29CE484222325 ^ band; per value: acc ^= v; acc *= 0x100000001B3; acc ^= acc >> 29``
    (mod 2**64).

    Equal bands give equal keys; unequal bands collide with probability ~2**-64,
    and a collision only adds a candidate that verification then rejects.
    """
    kernels = aot.load()
    return kernels.band_keys(np.ascontiguousarray(sig, np.uint32), bands, rows)
