"""Text projection, normalisation, shingle hashing and batch-vectorised MinHash.

Definitions (the tests hold datasketch to them):

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
  updated with the shingle tuples gives exactly the signatures `minhash_batch` computes.
* **MinHash**: datasketch 2.x's default `affine32` scheme: the shingle hash is
  pre-mixed with the MurmurHash3 32-bit finalizer, then permutation k is
  ``a_k * x + b_k mod 2**32`` (uint32 wrap-around), a_k, b_k drawn exactly as
  datasketch draws them from `np.random.RandomState(seed)`.
"""
from __future__ import annotations

import functools
import re
import unicodedata

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

#: Scripts written without spaces between words: CJK ideographs, kana, Thai, Lao, Myanmar, Khmer.
_NO_SPACE_SCRIPT = re.compile(
    "[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]"
)
NO_SPACE_SHARE = 0.3
FNV_OFFSET = np.uint32(0x811C9DC5)
FNV_PRIME = np.uint32(0x01000193)
_M32 = 0xFFFFFFFF
#: Shingles per MinHash chunk: 512 KB of uint32, so the working set stays in cache.
CHUNK_SHINGLES = 131_072

PROJECTION_ROLES = {
    "prompt": ("user",),
    "response": ("assistant",),
    "conversation": None,  # every turn
}


# -- projection and normalisation ---------------------------------------------------
def project(messages: pa.Array, projection: str) -> list[str]:
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
    joined = pc.binary_join(lists, "\n")
    return joined.to_pylist()


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


# -- vectorised shingle hashing -----------------------------------------------------
def _fold(unit_hashes: np.ndarray, k: int) -> np.ndarray:
    """FNV-1a fold of every window of k consecutive unit hashes (len n-k+1)."""
    n = len(unit_hashes) - k + 1
    if n <= 0:
        return np.empty(0, np.uint32)
    acc = np.full(n, FNV_OFFSET, np.uint32)
    for i in range(k):
        np.bitwise_xor(acc, unit_hashes[i : i + n], out=acc)
        np.multiply(acc, FNV_PRIME, out=acc)
    return acc


def hash_units(units: pa.Array) -> np.ndarray:
    """xxh32 of every string in an Arrow string array; each distinct string hashed once."""
    if len(units) == 0:
        return np.empty(0, np.uint32)
    enc = pc.dictionary_encode(units)
    enc = enc.combine_chunks() if isinstance(enc, pa.ChunkedArray) else enc
    uniq = np.fromiter(
        (xxhash.xxh32_intdigest(s.encode("utf-8")) for s in enc.dictionary.to_pylist()),
        dtype=np.uint32,
        count=len(enc.dictionary),
    )
    return uniq[np.asarray(enc.indices)]


def shingle_hashes(texts: list[str], units: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Shingle hashes of a batch of normalised texts, flat in text order, with per-text counts.

    Word-unit texts are tokenised and hashed in Arrow/NumPy over the whole batch;
    the few character-unit texts are hashed one by one.
    """
    n = len(texts)
    counts = np.zeros(n, np.int64)
    word_idx = np.array([i for i in range(n) if units[i] == "word" and texts[i]], np.int64)
    char_idx = [i for i in range(n) if units[i] == "char" and texts[i]]
    word_flat = np.empty(0, np.uint32)
    if len(word_idx):
        tokens = pc.split_pattern(pa.array([texts[i] for i in word_idx], pa.large_string()), " ")
        lengths = np.diff(np.asarray(tokens.offsets))
        folded = _fold(hash_units(tokens.flatten()), k)
        n_sh = np.maximum(lengths - k + 1, 0)
        # Windows that start in one text and end in the next are dropped.
        word_flat = folded[_ranges(np.cumsum(lengths) - lengths, n_sh)]
        counts[word_idx] = n_sh
    char_parts = {}
    for i in char_idx:
        chars = [c for c in texts[i] if c != " "]
        char_parts[i] = _fold(np.fromiter((unit_hash(c) for c in chars), np.uint32, count=len(chars)), k)
        counts[i] = len(char_parts[i])
    if not char_parts:
        return word_flat, counts
    out = np.empty(int(counts.sum()), np.uint32)
    out_starts = np.cumsum(counts) - counts
    out[_ranges(out_starts[word_idx], counts[word_idx])] = word_flat
    for i, hs in char_parts.items():
        out[out_starts[i] : out_starts[i] + len(hs)] = hs
    return out, counts


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s+l) for every (s, l), vectorised."""
    total = int(lengths.sum())
    if total == 0:
        return np.empty(0, np.int64)
    nz = lengths > 0
    s, l = starts[nz], lengths[nz]
    out = np.ones(total, np.int64)
    ends = np.cumsum(l)
    out[0] = s[0]
    out[ends[:-1]] = s[1:] - (s[:-1] + l[:-1] - 1)
    return np.cumsum(out)


# -- MinHash ------------------------------------------------------------------------
@functools.lru_cache(maxsize=16)
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 permutation parameters (a odd, b), same draws, same order."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer (datasketch's pre-mix), uint32 wrap-around."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def minhash_batch(hashes: np.ndarray, counts: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    """Signatures (len(counts) x num_perm uint32) of a batch; rows of texts without
    shingles are all 0xFFFFFFFF (datasketch's empty MinHash)."""
    a, b = permutations(num_perm, seed)
    sig = np.full((len(counts), num_perm), np.uint32(_M32), np.uint32)
    docs = np.flatnonzero(counts > 0)
    if len(docs) == 0:
        return sig
    x = fmix32(hashes.astype(np.uint32, copy=False))
    ends = np.cumsum(counts[docs])
    starts = ends - counts[docs]
    # One permutation at a time over a cache-sized run of whole documents: three
    # vector passes (multiply, add, segment-min) per permutation, no 2-D block.
    d0 = 0
    while d0 < len(docs):
        lo = starts[d0]
        d1 = max(int(np.searchsorted(ends, lo + CHUNK_SHINGLES, side="right")), d0 + 1)
        xs = x[lo : ends[d1 - 1]]
        buf = np.empty_like(xs)
        seg = starts[d0:d1] - lo
        out = np.empty((num_perm, d1 - d0), np.uint32)
        for k in range(num_perm):
            np.multiply(xs, a[k], out=buf)
            buf += b[k]
            np.minimum.reduceat(buf, seg, out=out[k])
        sig[docs[d0:d1]] = out.T
        d0 = d1
    return sig


# -- LSH bands ------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def lsh_params(threshold: float, num_perm: int, fp_weight: float, fn_weight: float) -> tuple[int, int]:
    """(bands, rows) from datasketch's own optimiser (MinHashLSH uses the same function)."""
    from datasketch.lsh import _optimal_param

    return _optimal_param(threshold, num_perm, fp_weight, fn_weight)


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per band (n x bands uint64): a hash of the band's `rows` values.

    Equal bands give equal keys; unequal bands collide with probability ~2**-64,
    and a collision only adds a candidate that verification then rejects.
    """
    n = sig.shape[0]
    out = np.empty((n, bands), np.uint64)
    prime = np.uint64(0x100000001B3)
    for j in range(bands):
        acc = np.full(n, np.uint64(0xCBF29CE484222325) ^ np.uint64(j), np.uint64)
        for v in sig[:, j * rows : (j + 1) * rows].T:
            acc ^= v.astype(np.uint64)
            acc *= prime
            acc ^= acc >> np.uint64(29)
        out[:, j] = acc
    return out
