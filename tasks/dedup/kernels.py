"""Compiled (numba) loops for shingle hashing and MinHash: the definitions of `minhash.py`,
one pass over the bytes of a batch instead of Arrow tokenising plus several NumPy passes.

`cache=True` keeps the compiled code under `__pycache__`, so only the first process after
a change compiles (a few seconds); later ones load it.
"""
from __future__ import annotations

import numpy as np
from numba import njit

# uint64 constants: numba would turn uint64-with-int64 arithmetic into float64.
_P1, _P2, _P3, _P4, _P5 = (np.uint64(x) for x in (0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D, 0x27D4EB2F, 0x165667B1))
_M = np.uint64(0xFFFFFFFF)
_FNV_OFFSET, _FNV_PRIME = np.uint64(0x811C9DC5), np.uint64(0x01000193)


@njit(cache=True, inline="always")
def _rotl(x, r):
    return ((x << np.uint64(r)) | (x >> np.uint64(32 - r))) & _M


@njit(cache=True, inline="always")
def _read32(data, p):
    return (np.uint64(data[p]) | (np.uint64(data[p + 1]) << np.uint64(8)) | (np.uint64(data[p + 2]) << np.uint64(16))
            | (np.uint64(data[p + 3]) << np.uint64(24)))


@njit(cache=True)
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


@njit(cache=True)
def _unit_bounds(data, start, end, by_char, out_start, out_end):
    """Fill out_start/out_end with the byte ranges of the text's units; return their number.

    Words are separated by single spaces (the text is normalised); characters are UTF-8
    sequences, spaces skipped."""
    n = 0
    p = start
    if by_char:
        while p < end:
            b = data[p]
            size = 1 if b < 0x80 else (2 if b < 0xE0 else (3 if b < 0xF0 else 4))
            if b != 0x20:
                out_start[n] = p
                out_end[n] = min(p + size, end)
                n += 1
            p += size
    elif end > start:
        s = start
        while p < end:
            if data[p] == 0x20:
                out_start[n] = s
                out_end[n] = p
                n += 1
                s = p + 1
            p += 1
        out_start[n] = s
        out_end[n] = end
        n += 1
    return n


@njit(cache=True)
def shingle_hashes(data, offsets, by_char, k):
    """(flat shingle hashes in text order, shingles per text) of a batch of normalised texts
    (their UTF-8 bytes `data`, text i at data[offsets[i]:offsets[i+1]])."""
    n = len(offsets) - 1
    counts = np.zeros(n, np.int64)
    longest = 0
    for i in range(n):
        longest = max(longest, offsets[i + 1] - offsets[i])
    starts = np.empty(longest + 1, np.int64)
    ends = np.empty(longest + 1, np.int64)
    units = np.empty(longest + 1, np.uint64)
    total = 0
    for i in range(n):  # pass 1: how many shingles
        m = _unit_bounds(data, offsets[i], offsets[i + 1], by_char[i], starts, ends)
        counts[i] = max(m - k + 1, 0)
        total += counts[i]
    out = np.empty(total, np.uint32)
    pos = 0
    for i in range(n):  # pass 2: unit hashes, folded FNV-1a style over each window of k
        if counts[i] == 0:
            continue
        m = _unit_bounds(data, offsets[i], offsets[i + 1], by_char[i], starts, ends)
        for u in range(m):
            units[u] = xxh32(data, starts[u], ends[u])
        for s in range(m - k + 1):
            acc = _FNV_OFFSET
            for j in range(k):
                acc = ((acc ^ units[s + j]) * _FNV_PRIME) & _M
            out[pos] = acc
            pos += 1
    return out, counts


@njit(cache=True)
def minhash(hashes, counts, a, b):
    """Signatures (len(counts) x len(a)) of consecutive runs of shingle hashes: datasketch's
    affine32 scheme (MurmurHash3 finalizer, then a*x + b mod 2**32, minimum per permutation);
    texts without shingles get 0xFFFFFFFF everywhere."""
    n, perms = len(counts), len(a)
    sig = np.full((n, perms), np.uint32(_M), np.uint32)
    pos = 0
    for i in range(n):
        row = sig[i]
        for s in range(pos, pos + counts[i]):
            x = np.uint32(hashes[s])
            x ^= x >> np.uint32(16)
            x = np.uint32(x * np.uint32(0x85EBCA6B))
            x ^= x >> np.uint32(13)
            x = np.uint32(x * np.uint32(0xC2B2AE35))
            x ^= x >> np.uint32(16)
            for p in range(perms):
                v = np.uint32(a[p] * x + b[p])
                if v < row[p]:
                    row[p] = v
        pos += counts[i]
    return sig


@njit(cache=True)
def normalise_ascii(data, offsets, is_ascii, repl_data, repl_offsets):
    """(bytes, offsets) of every text normalised: an ASCII text lower-cased with each run of
    the whitespace `str.split()` knows below U+0080 (tab to carriage return, the information
    separators 0x1C-0x1F, space) folded to one space and the ends stripped, which is what
    NFKC + casefold + split/join give for ASCII; the k-th other text is replaced by
    repl_data[repl_offsets[k]:repl_offsets[k+1]] (normalised in Python)."""
    n = len(offsets) - 1
    out = np.empty(len(data) + len(repl_data), np.uint8)
    out_offsets = np.zeros(n + 1, np.int64)
    w = 0
    r = 0
    for i in range(n):
        if is_ascii[i]:
            pending = False
            started = False
            for p in range(offsets[i], offsets[i + 1]):
                c = data[p]
                if c == 32 or (9 <= c <= 13) or (28 <= c <= 31):
                    pending = started
                else:
                    if pending:
                        out[w] = 32
                        w += 1
                        pending = False
                    out[w] = c + 32 if 65 <= c <= 90 else c
                    w += 1
                    started = True
        else:
            for p in range(repl_offsets[r], repl_offsets[r + 1]):
                out[w] = repl_data[p]
                w += 1
            r += 1
        out_offsets[i + 1] = w
    return out[:w], out_offsets
