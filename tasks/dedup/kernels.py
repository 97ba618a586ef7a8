"""Compiled (numba) loops for normalising, shingle hashing, MinHash and LSH band keys: the
definitions of `minhash.py`, text by text over a batch's bytes, so each text's units,
shingles and signature are made while they are still in the CPU cache.

The pipeline loads them through `aot.py`, compiled ahead of time from this file. Under JIT
(the fallback, and the tests that compare the two), `cache=True` keeps the compiled code under
`__pycache__`, so only the first process after a change compiles them.
"""
from __future__ import annotations

import numpy as np
from numba import njit

# uint64 constants: numba would turn uint64-with-int64 arithmetic into float64.
_P1, _P2, _P3, _P4, _P5 = (np.uint64(x) for x in (0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D, 0x27D4EB2F, 0x165667B1))
_M = np.uint64(0xFFFFFFFF)
_FNV_OFFSET, _FNV_PRIME = np.uint64(0x811C9DC5), np.uint64(0x01000193)
_BAND_OFFSET, _BAND_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)

#: ASCII bytes `str.split()` treats as whitespace: tab to carriage return, the information
#: separators 0x1C-0x1F, space.
_IS_WS = np.zeros(256, np.uint8)
_IS_WS[[9, 10, 11, 12, 13, 28, 29, 30, 31, 32]] = 1
#: An ASCII byte normalised: upper case lowered, whitespace made a space.
_FOLD = np.arange(256, dtype=np.uint8)
_FOLD[65:91] += 32
_FOLD[_IS_WS == 1] = 32


@njit(cache=True, inline="always")
def _rotl(x, r):
    return ((x << np.uint64(r)) | (x >> np.uint64(32 - r))) & _M


@njit(cache=True, inline="always")
def _read32(data, p):
    return (np.uint64(data[p]) | (np.uint64(data[p + 1]) << np.uint64(8)) | (np.uint64(data[p + 2]) << np.uint64(16))
            | (np.uint64(data[p + 3]) << np.uint64(24)))


@njit(cache=True, inline="always")
def xxh32(data, start, end):
    """xxHash32 (seed 0) of data[start:end], the value `xxhash.xxh32_intdigest` gives."""
    p = start
    length = end - start
    if length >= 16:
        v1 = (_P1 + _P2) & _M
        v2 = _P2
        v3 = np.uint64(0)
        v4 = (np.uint64(0x100000000) - _P1) & _M
        while p + 16 <= end:
            v1 = (_rotl((v1 + _read32(data, p) * _P2) & _M, 13) * _P1) & _M
            v2 = (_rotl((v2 + _read32(data, p + 4) * _P2) & _M, 13) * _P1) & _M
            v3 = (_rotl((v3 + _read32(data, p + 8) * _P2) & _M, 13) * _P1) & _M
            v4 = (_rotl((v4 + _read32(data, p + 12) * _P2) & _M, 13) * _P1) & _M
            p += 16
        h = (_rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)) & _M
    else:
        h = _P5
    h = (h + np.uint64(length)) & _M
    while p + 4 <= end:
        h = (_rotl((h + _read32(data, p) * _P3) & _M, 17) * _P4) & _M
        p += 4
    while p < end:
        h = (_rotl((h + np.uint64(data[p]) * _P5) & _M, 11) * _P1) & _M
        p += 1
    h ^= h >> np.uint64(15)
    h = (h * _P2) & _M
    h ^= h >> np.uint64(13)
    h = (h * _P3) & _M
    h ^= h >> np.uint64(16)
    return h


@njit(cache=True, inline="always")
def _normalise_ascii(data, s, e, out, w):
    """Write data[s:e], an ASCII text, normalised to out[w:]; return the new end. Branch-free
    inside the text: every byte is written, and a whitespace byte followed by whitespace
    is overwritten by the next one."""
    while s < e and _IS_WS[data[s]]:
        s += 1
    while e > s and _IS_WS[data[e - 1]]:
        e -= 1
    if s == e:
        return w
    c = data[s]
    ws = _IS_WS[c]
    for p in range(s + 1, e):
        next_c = data[p]
        next_ws = _IS_WS[next_c]
        out[w] = _FOLD[c]
        w += 1 - (ws & next_ws)
        c, ws = next_c, next_ws
    out[w] = _FOLD[c]
    return w + 1


@njit(cache=True, nogil=True)
def normalise(data, offsets, is_ascii, repl_data, repl_offsets):
    """(bytes, offsets) of every text normalised: an ASCII text lower-cased with each run of
    whitespace folded to one space and the ends stripped, which is what NFKC + casefold +
    split/join give for ASCII; the k-th other text is replaced by
    repl_data[repl_offsets[k]:repl_offsets[k+1]] (normalised in Python)."""
    n = len(offsets) - 1
    out = np.empty(len(data) + len(repl_data), np.uint8)
    out_offsets = np.zeros(n + 1, np.int64)
    w = 0
    r = 0
    for i in range(n):
        if is_ascii[i]:
            w = _normalise_ascii(data, offsets[i], offsets[i + 1], out, w)
        else:
            m = repl_offsets[r + 1] - repl_offsets[r]
            out[w : w + m] = repl_data[repl_offsets[r] : repl_offsets[r + 1]]
            w += m
            r += 1
        out_offsets[i + 1] = w
    return out[:w], out_offsets


@njit(cache=True, inline="always")
def _unit_hashes(data, s, e, by_char, units):
    """xxh32 of each unit of the normalised text data[s:e] into units[:m]; return m. Words
    are separated by single spaces; characters are UTF-8 sequences, spaces skipped."""
    m = 0
    p = s
    if by_char:
        while p < e:
            b = data[p]
            q = min(p + (1 if b < 0x80 else (2 if b < 0xE0 else (3 if b < 0xF0 else 4))), e)
            if b != 0x20:
                units[m] = xxh32(data, p, q)
                m += 1
            p = q
    elif e > s:
        for q in range(s, e + 1):
            if q == e or data[q] == 0x20:
                units[m] = xxh32(data, p, q)
                m += 1
                p = q + 1
    return m


@njit(cache=True, inline="always")
def _minhash(mixed, m, a, b, row):
    """row[p] = min over the m pre-mixed shingle hashes x of a[p] * x + b[p] mod 2**32."""
    for p in range(len(a)):
        ap, bp = a[p], b[p]
        best = np.uint32(0xFFFFFFFF)
        for t in range(m):
            best = min(best, np.uint32(ap * mixed[t] + bp))
        row[p] = best


@njit(cache=True, inline="always")
def _band_keys(row, bands, rows, out):
    for j in range(bands):
        acc = _BAND_OFFSET ^ np.uint64(j)
        for r in range(j * rows, (j + 1) * rows):
            acc ^= np.uint64(row[r])
            acc *= _BAND_PRIME
            acc ^= acc >> np.uint64(29)
        out[j] = acc


@njit(cache=True, nogil=True)
def band_keys(sig, bands, rows):
    out = np.empty((sig.shape[0], bands), np.uint64)
    for i in range(sig.shape[0]):
        _band_keys(sig[i], bands, rows, out[i])
    return out


@njit(cache=True, nogil=True)
def sketch(data, offsets, by_char, k, a, b, bands, rows):
    """(flat shingle hashes in text order, shingles per text, signatures, band keys) of a
    batch of normalised texts (text i is data[offsets[i]:offsets[i+1]]). Shingle hashes: the
    unit hashes of each window of k folded FNV-1a style. Signatures (datasketch's affine32):
    each shingle hash pre-mixed by the MurmurHash3 finalizer, then the minimum of
    a * x + b mod 2**32 per permutation; 0xFFFFFFFF everywhere for a text without shingles.
    With no permutations (len(a) == 0), only the shingle hashes are made."""
    n = len(offsets) - 1
    longest = 1
    for i in range(n):
        longest = max(longest, offsets[i + 1] - offsets[i] + 1)
    units = np.empty(longest, np.uint64)
    mixed = np.empty(longest, np.uint32)
    counts = np.zeros(n, np.int64)
    hashes = np.empty(len(data) // 4 + 16, np.uint32)
    sig = np.full((n, len(a)), np.uint32(0xFFFFFFFF), np.uint32)
    pos = 0
    for i in range(n):
        m = _unit_hashes(data, offsets[i], offsets[i + 1], by_char[i], units)
        c = m - k + 1
        if c <= 0:
            continue
        if pos + c > len(hashes):
            grown = np.empty(max(2 * len(hashes), pos + c), np.uint32)
            grown[:pos] = hashes[:pos]
            hashes = grown
        for t in range(c):
            acc = _FNV_OFFSET
            for j in range(t, t + k):
                acc = ((acc ^ units[j]) * _FNV_PRIME) & _M
            x = np.uint32(acc)
            hashes[pos + t] = x
            x ^= x >> np.uint32(16)
            x = np.uint32(x * np.uint32(0x85EBCA6B))
            x ^= x >> np.uint32(13)
            x = np.uint32(x * np.uint32(0xC2B2AE35))
            x ^= x >> np.uint32(16)
            mixed[t] = x
        _minhash(mixed, c, a, b, sig[i])
        counts[i] = c
        pos += c
    return hashes[:pos], counts, sig, band_keys(sig, bands, rows)
