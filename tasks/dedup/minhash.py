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
* **Unit hash** `u` (`unit_hash`, signature version 6): over the unit's UTF-8 bytes, all
  arithmetic mod 2**64: ``h = len * K0``; each 8-byte little-endian chunk but the last:
  ``h = (h ^ chunk) * K1; h ^= h >> 31``; the last chunk (1 to 8 bytes, zero-filled):
  ``h = (h ^ chunk) * K1``; then ``h ^= h >> 32; h *= K2; h ^= h >> 29``; u is the low 32
  bits. K0, K1, K2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB (the
  golden-ratio increment and SplitMix64's multipliers). A word of up to 8 bytes costs one
  load, two multiplies and three shifts; versions 1-5 used xxh32 (seed 0), which takes a
  pass over the word's bytes and 6 multiplies and was 60% of the hashing time.
* **Shingle hash** `h` (`shingle_hash`): the k unit hashes folded FNV-1a style,
  ``acc = 0x811C9DC5; acc = ((acc ^ u) * 0x01000193) mod 2**32``. It is a 32-bit integer,
  so `datasketch.MinHash(num_perm, seed, hashfunc=shingle_hash)` updated with the shingle
  tuples gives exactly the signatures `sketch` computes (tests/test_dedup.py holds them
  equal); signatures equal datasketch's only with this hashfunc, not with its default
  (sha1 of the shingle's bytes).
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
_K0, _K1, _K2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_M64 = (1 << 64) - 1


def unit_hash(unit: str) -> int:
    """Tuneline's 32-bit unit hash `u` (module docstring)."""
    data = unit.encode("utf-8")
    h = (len(data) * _K0) & _M64
    while len(data) > 8:
        h = ((h ^ int.from_bytes(data[:8], "little")) * _K1) & _M64
        h ^= h >> 31
        data = data[8:]
    h = ((h ^ int.from_bytes(data, "little")) * _K1) & _M64
    h ^= h >> 32
    h = (h * _K2) & _M64
    h ^= h >> 29
    return h & _M32


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

    def exact_keys_and_ints(self) -> tuple[list[str | None], np.ndarray, np.ndarray, np.ndarray]:
        """(`exact_key` of every text, the same 128 bits as (high, low) uint64s, has a key)."""
        view, off = memoryview(self.data), self.offsets.tolist()
        digest, none = xxhash.xxh3_128_digest, bytes(16)
        digests = [digest(view[a:b]) if b > a else none for a, b in zip(off, off[1:])]
        words = np.frombuffer(b"".join(digests), ">u8").reshape(-1, 2).astype(np.uint64) if digests else (
            np.zeros((0, 2), np.uint64))
        has = np.diff(self.offsets) > 0
        keys = [d.hex() if h else None for d, h in zip(digests, has.tolist())]
        return keys, words[:, 0].copy(), words[:, 1].copy(), has

    def units(self) -> list[str]:
        return np.where(self.by_char, "char", "word").tolist()


@dataclass
class Sketch:
    """What `sketch_texts` makes of a batch: the normalised texts, the shingle hashes in text
    order (`hashes[ends[i-1]:ends[i]]` is text i's), shingles per text, signatures (n x
    num_perm uint32; all 0xFFFFFFFF for a text without shingles) and LSH band keys (n x bands)."""

    texts: Normalised
    hashes: np.ndarray  # uint32
    counts: np.ndarray  # int64
    sig: np.ndarray  # uint32, n x num_perm
    band_keys: np.ndarray  # uint64, n x bands


class Workspace:
    """The kernels' buffers, NumPy arrays kept from batch to batch and grown when a batch needs
    more. Fresh memory is a page fault per 4 KiB on first touch (NumPy asks for huge pages for
    large arrays; memory numba allocates inside a kernel gets none), so reusing them is most of
    what makes a batch's allocation free. A `Sketch` made with a workspace lives in its buffers:
    it is valid until the workspace's next batch."""

    def __init__(self):
        self._buffers: dict[str, np.ndarray] = {}

    def get(self, name: str, size: int, dtype) -> np.ndarray:
        buf = self._buffers.get(name)
        if buf is None or buf.size < size or buf.dtype != np.dtype(dtype):
            buf = np.empty(max(size, int(1.25 * (0 if buf is None else buf.size))), dtype)
            self._buffers[name] = buf
        return buf[:size]


def _prepare(texts: pa.Array, shingle: str):
    """(data, offsets, kind per text, replacement bytes, their offsets, by_char) of a batch: ASCII
    texts go to the compiled normaliser as they are; the others are normalised here (NFKC,
    casefold) and handed over normalised."""
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
    by_char = np.full(n, shingle == "char")
    if shingle != "char":
        by_char[~is_ascii] = [choose_unit(t, shingle) == "char" for t in others]
    kind = np.where(is_ascii, 0, 2).astype(np.uint8) + by_char.astype(np.uint8)
    repl = np.frombuffer(b"".join(encoded) or b"\0", np.uint8)
    return data, offsets, kind, repl, repl_offsets, by_char


def sketch_texts(texts: pa.Array, shingle: str, k: int, num_perm: int, seed: int, bands: int, rows: int,
                 workspace: Workspace | None = None) -> Sketch:
    """Normalise, shingle (k units), hash and MinHash every text of an Arrow string array, by
    one compiled loop over its texts (`kernels.sketch`). With `num_perm` 0 only the
    normalised texts and shingle hashes are made. Arrays live in `workspace` when one is given."""
    kernels = aot.load()
    ws = workspace or Workspace()
    data, offsets, kind, repl, repl_offsets, by_char = _prepare(texts, shingle)
    n = len(kind)
    a, b = permutations(num_perm, seed) if num_perm else (np.empty(0, np.uint32), np.empty(0, np.uint32))
    raw_longest = int(np.diff(offsets).max(initial=0))
    longest = max(raw_longest, int(np.diff(repl_offsets).max(initial=0))) + 2
    size = int(offsets[-1] - offsets[0]) + len(repl) + 16
    out, out_offsets, counts = ws.get("out", size, np.uint8), ws.get("out_offsets", n + 1, np.int64), ws.get(
        "counts", n, np.int64)
    hashes = ws.get("hashes", size, np.uint32)
    sig = ws.get("sig", n * num_perm, np.uint32).reshape(n, num_perm)
    bkeys = ws.get("bkeys", n * bands, np.uint64).reshape(n, bands)
    total = kernels.sketch(data, offsets, kind, repl, repl_offsets, k, a, b, bands, rows, out, out_offsets,
                           counts, hashes, sig, bkeys, ws.get("ends", longest, np.int64),
                           ws.get("units", longest, np.uint32), ws.get("mixed", longest, np.uint32))
    normalised = Normalised(out[: out_offsets[n]], out_offsets, by_char)
    return Sketch(normalised, hashes[:total], counts, sig, bkeys)


def normalise_texts(texts: pa.Array, shingle: str = "word") -> Normalised:
    """`normalise` and `choose_unit` of every text of an Arrow string array (compiled for ASCII
    texts, the others in Python)."""
    return sketch_texts(texts, shingle, 1, 0, 1, 0, 1).texts


def normalise_batch(messages: pa.Array, projection: str, shingle: str = "word") -> Normalised:
    return normalise_texts(project_arrow(messages, projection), shingle)


def sketch(texts: Normalised, k: int, num_perm: int, seed: int, bands: int, rows: int):
    """(flat shingle hashes, shingles per text, signatures, band keys) of normalised texts."""
    kernels = aot.load()
    n = len(texts)
    data = np.ascontiguousarray(texts.data) if len(texts.data) else np.zeros(1, np.uint8)
    kind = (2 + texts.by_char.astype(np.uint8)).astype(np.uint8)  # already normalised: copied, split
    offsets = np.ascontiguousarray(texts.offsets, np.int64) - int(texts.offsets[0])
    a, b = permutations(num_perm, seed) if num_perm else (np.empty(0, np.uint32), np.empty(0, np.uint32))
    size = len(data) + 16
    longest = int(np.diff(offsets).max(initial=0)) + 2
    out, hashes = np.empty(size, np.uint8), np.empty(size, np.uint32)
    counts, sig, bkeys = np.empty(n, np.int64), np.empty((n, num_perm), np.uint32), np.empty((n, bands), np.uint64)
    total = kernels.sketch(np.zeros(1, np.uint8), np.zeros(n + 1, np.int64), kind, data, offsets, k, a, b, bands, rows,
                           out, np.empty(n + 1, np.int64), counts, hashes, sig, bkeys, np.empty(longest, np.int64),
                           np.empty(longest, np.uint32), np.empty(longest, np.uint32))
    return hashes[:total].copy(), counts, sig, bkeys


def shingle_hashes(texts: Normalised, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(flat uint32 shingle hashes in text order, shingles per text): `shingle_hash` of every
    shingle of every text."""
    hashes, counts, _, _ = sketch(texts, k, 0, 1, 0, 1)
    return hashes, counts


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
    """(bands, rows) as datasketch's MinHashLSH chooses them (`datasketch.lsh._optimal_param`):
    of every b bands x r rows with b * r <= num_perm, in datasketch's order (b, then r), the first
    that minimises fp_weight * P(false positive) + fn_weight * P(false negative), each
    probability integrated over Jaccard s below / above the threshold: ∫ 1 - (1 - s^r)^b ds on
    [0, threshold] and ∫ (1 - s^r)^b ds on [threshold, 1].

    The integrands are polynomials of degree b * r <= num_perm, so Gauss-Legendre quadrature
    with num_perm // 2 + 1 nodes is exact (up to rounding), where datasketch calls SciPy's
    adaptive `quad` (tests/test_dedup.py checks the choice equals datasketch's over a grid);
    importing scipy.integrate cost a small run about 0.35 s."""
    nodes, weights = np.polynomial.legendre.leggauss(num_perm // 2 + 1)
    pairs = np.array([(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)], np.float64)
    b, r = pairs[:, :1], pairs[:, 1:]

    def integral(lo: float, hi: float, f) -> np.ndarray:
        s = (hi - lo) / 2 * nodes + (hi + lo) / 2
        return (hi - lo) / 2 * (f(s[None, :]) @ weights)

    fp = integral(0.0, threshold, lambda s: 1 - (1 - s**r) ** b)
    fn = integral(threshold, 1.0, lambda s: (1 - s**r) ** b)
    best = int(np.argmin(fp * fp_weight + fn * fn_weight))  # the first of equal minima, as datasketch's strict <
    return int(pairs[best, 0]), int(pairs[best, 1])


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per band (n x bands uint64): a hash of the band's `rows` values,
    ``acc = 0xCBF29CE484222325 ^ band; per value: acc ^= v; acc *= 0x100000001B3; acc ^= acc >> 29``
    (mod 2**64).

    Equal bands give equal keys; unequal bands collide with probability ~2**-64,
    and a collision only adds a candidate that verification then rejects.
    """
    kernels = aot.load()
    return kernels.band_keys(np.ascontiguousarray(sig, np.uint32), bands, rows)
