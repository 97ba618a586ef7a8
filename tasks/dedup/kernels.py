"""Compiled (numba) loops for normalising, unit and shingle hashing, MinHash and LSH band keys:
the definitions of `minhash.py`, text by text over a batch's bytes, so each text's units,
shingles and signature are made while they are still in the CPU cache.

ASCII text is normalised eight bytes at a time (SWAR: upper case and whitespace found with
byte-range masks in one 64-bit word; a word without a whitespace run is stored at once), and
each unit is hashed from unaligned 64-bit loads of its bytes, so a word costs one or two
multiplies instead of a pass over its bytes. Every buffer is the caller's (`minhash.Workspace`,
NumPy arrays reused batch after batch): memory a kernel allocates itself is fresh pages on
every call, and a page fault costs more here than hashing the page.

The pipeline loads them through `aot.py`, compiled ahead of time from this file. Under JIT
(the fallback, and the tests that compare the two), `cache=True` keeps the compiled code under
`__pycache__`, so only the first process after a change compiles them.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.cpython.unsafe.numbers import trailing_zeros
from numba.extending import intrinsic

_U = np.uint64
# The unit hash (minhash.unit_hash): 64-bit multiply-xorshift over 8-byte little-endian chunks.
_K0, _K1, _K2 = _U(0x9E3779B97F4A7C15), _U(0xBF58476D1CE4E5B9), _U(0x94D049BB133111EB)
_M32 = _U(0xFFFFFFFF)
_FNV_OFFSET, _FNV_PRIME = np.uint32(0x811C9DC5), np.uint32(0x01000193)
_BAND_OFFSET, _BAND_PRIME = _U(0xCBF29CE484222325), _U(0x100000001B3)
_ONES, _HIGH = _U(0x0101010101010101), _U(0x8080808080808080)
#: The low `i` bytes of a 64-bit word.
_LOW_BYTES = np.array([(1 << (8 * i)) - 1 for i in range(8)] + [(1 << 64) - 1], np.uint64)

#: ASCII bytes `str.split()` treats as whitespace: tab to carriage return, the information
#: separators 0x1C-0x1F, space.
_IS_WS = np.zeros(256, np.uint8)
_IS_WS[[9, 10, 11, 12, 13, 28, 29, 30, 31, 32]] = 1
#: An ASCII byte normalised: upper case lowered, whitespace made a space.
_FOLD = np.arange(256, dtype=np.uint8)
_FOLD[65:91] += 32
_FOLD[_IS_WS == 1] = 32

#: Per-text kinds (`sketch`'s `kind`): ASCII text normalised here, split in words or characters;
#: text normalised in Python (`repl_*`), split in words or characters.
ASCII_WORDS, ASCII_CHARS, NORMALISED_WORDS, NORMALISED_CHARS = 0, 1, 2, 3


@intrinsic
def _load64(typingctx, arr, idx):
    """arr[idx:idx + 8] (a uint8 array) as a little-endian uint64, from any address."""
    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        ptr = builder.gep(ary.data, [args[1]])
        return builder.load(builder.bitcast(ptr, ir.IntType(64).as_pointer()), align=1)
    return types.uint64(arr, types.intp), codegen


@intrinsic
def _store64(typingctx, arr, idx, value):
    """arr[idx:idx + 8] = value (little-endian), at any address."""
    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        ptr = builder.gep(ary.data, [args[1]])
        builder.store(args[2], builder.bitcast(ptr, ir.IntType(64).as_pointer()), align=1)
        return context.get_dummy_value()
    return types.void(arr, types.intp, types.uint64), codegen


@njit(cache=True, inline="always")
def _in_range(x, lo, hi):
    """The high bit of every byte of x that is in [lo, hi] (bytes below 0x80 only)."""
    return (x + _ONES * _U(0x80 - lo)) & ~(x + _ONES * _U(0x7F - hi)) & _HIGH


@njit(cache=True, inline="always")
def unit_hash(data, p, length):
    """The 32-bit hash of data[p:p + length] (1 <= length; data readable 8 bytes past it):
    h = length * K0; each 8-byte chunk but the last: h = (h ^ chunk) * K1, h ^= h >> 31; the
    last (1 to 8 bytes, zero-filled): h = (h ^ chunk) * K1; then h ^= h >> 32, h *= K2,
    h ^= h >> 29; the low 32 bits (arithmetic mod 2**64)."""
    h = _U(length) * _K0
    while length > 8:
        h = (h ^ _load64(data, p)) * _K1
        h ^= h >> _U(31)
        p += 8
        length -= 8
    h = (h ^ (_load64(data, p) & _LOW_BYTES[length])) * _K1
    h ^= h >> _U(32)
    h *= _K2
    h ^= h >> _U(29)
    return np.uint32(h & _M32)


@njit(cache=True, inline="always")
def _normalise_ascii(data, s, e, out, w, ends):
    """Normalise the ASCII text data[s:e] into out[w:] (lower case, whitespace runs one space,
    ends stripped) and put the end of each of its words (exclusive) in ends; return (new w,
    number of words). Eight bytes at a time where they hold no whitespace run."""
    w0 = w
    q = 0
    prev = _U(1)  # whitespace at the start is dropped
    p = s
    while p + 8 <= e:
        x = _load64(data, p)
        ws = (_in_range(x, 9, 13) | _in_range(x, 28, 32)) >> _U(7)  # 1 in each whitespace byte
        if ws & ((ws << _U(8)) | prev) == _U(0):  # no whitespace after whitespace: all 8 bytes kept
            y = x | (_in_range(x, 65, 90) >> _U(2))  # upper case + 0x20
            _store64(out, w, (y & ~(ws * _U(0xFF))) | (ws * _U(0x20)))
            bits = ws
            while bits:
                ends[q] = w + (trailing_zeros(bits) >> 3)
                q += 1
                bits &= bits - _U(1)
            w += 8
            prev = ws >> _U(56)
            p += 8
            continue
        for j in range(p, p + 8):
            c = data[j]
            is_ws = _U(_IS_WS[c])
            out[w] = _FOLD[c]
            keep = _U(1) - (is_ws & prev)
            if is_ws & keep:
                ends[q] = w
                q += 1
            w += keep
            prev = is_ws
        p += 8
    while p < e:
        c = data[p]
        is_ws = _U(_IS_WS[c])
        out[w] = _FOLD[c]
        keep = _U(1) - (is_ws & prev)
        if is_ws & keep:
            ends[q] = w
            q += 1
        w += keep
        prev = is_ws
        p += 1
    if w > w0 and prev:  # the text ended in whitespace: drop its one space
        w -= 1
        q -= 1
    if w > w0:
        ends[q] = w
        q += 1
    return w, q


@njit(cache=True, inline="always")
def _copy_words(src, s, e, out, w, ends):
    """Copy the normalised text src[s:e] to out[w:], its word ends into ends; (new w, words)."""
    q = 0
    for p in range(s, e):
        c = src[p]
        out[w] = c
        if c == 0x20:
            ends[q] = w
            q += 1
        w += 1
    if e > s:
        ends[q] = w
        q += 1
    return w, q


@njit(cache=True, inline="always")
def _char_units(out, s, e, units):
    """Hash each character of the normalised text out[s:e] but spaces (UTF-8 sequences) into
    units; return how many."""
    m = 0
    p = s
    while p < e:
        b = out[p]
        q = min(p + (1 if b < 0x80 else (2 if b < 0xE0 else (3 if b < 0xF0 else 4))), e)
        if b != 0x20:
            units[m] = unit_hash(out, p, q - p)
            m += 1
        p = q
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
        acc = _BAND_OFFSET ^ _U(j)
        for r in range(j * rows, (j + 1) * rows):
            acc ^= _U(row[r])
            acc *= _BAND_PRIME
            acc ^= acc >> _U(29)
        out[j] = acc


@njit(cache=True, nogil=True)
def band_keys(sig, bands, rows):
    out = np.empty((sig.shape[0], bands), np.uint64)
    for i in range(sig.shape[0]):
        _band_keys(sig[i], bands, rows, out[i])
    return out


@njit(cache=True, nogil=True)
def sketch(data, offsets, kind, repl_data, repl_offsets, k, a, b, bands, rows,
           out, out_offsets, counts, hashes, sig, bkeys, ends, units, mixed):
    """Normalise, shingle, hash and MinHash a batch of texts (text i is data[offsets[i]:
    offsets[i+1]], or, for kinds NORMALISED_*, the next text of repl_data, already normalised).

    Writes, into the caller's buffers: the normalised texts (out[out_offsets[i]:out_offsets[i+1]];
    out needs len(data) + len(repl_data) + 16 bytes), the shingle hashes in text order
    (hashes[:total]; at least as many as out's bytes), shingles per text (counts), signatures
    (sig, len(texts) x len(a): datasketch's affine32 over the pre-mixed shingle hashes,
    0xFFFFFFFF for a text without shingles) and band keys (bkeys, len(texts) x bands).
    `ends`, `units`, `mixed`: scratch of at least the longest text's bytes + 2. With no
    permutations (len(a) == 0) only the texts and shingle hashes are made. Returns the number
    of shingle hashes."""
    n = len(offsets) - 1
    w = 0
    pos = 0
    r = 0
    out_offsets[0] = 0
    for i in range(n):
        w0 = w
        kd = kind[i]
        if kd <= ASCII_CHARS:
            w, q = _normalise_ascii(data, offsets[i], offsets[i + 1], out, w, ends)
        else:
            w, q = _copy_words(repl_data, repl_offsets[r], repl_offsets[r + 1], out, w, ends)
            r += 1
        out_offsets[i + 1] = w
        if kd == ASCII_CHARS or kd == NORMALISED_CHARS:
            m = _char_units(out, w0, w, units)
        else:
            m = q
            start = w0
            for j in range(q):
                units[j] = unit_hash(out, start, ends[j] - start)
                start = ends[j] + 1
        c = m - k + 1
        counts[i] = max(c, 0)
        for p in range(len(a)):
            sig[i, p] = np.uint32(0xFFFFFFFF)
        if c <= 0:
            if len(a):
                _band_keys(sig[i], bands, rows, bkeys[i])
            continue
        h = hashes[pos:pos + c]
        for t in range(c):  # FNV-1a fold of the k unit hashes of each window, a pass per unit
            h[t] = _FNV_OFFSET
        for j in range(k):
            u = units[j:j + c]
            for t in range(c):
                h[t] = (h[t] ^ u[t]) * _FNV_PRIME
        if len(a):
            for t in range(c):  # MurmurHash3's 32-bit finalizer (datasketch's pre-mix)
                x = h[t]  # numba widens uint32 products to 64 bits: cut each back to 32
                x ^= x >> np.uint32(16)
                x = np.uint32(x * np.uint32(0x85EBCA6B))
                x ^= x >> np.uint32(13)
                x = np.uint32(x * np.uint32(0xC2B2AE35))
                x ^= x >> np.uint32(16)
                mixed[t] = x
            _minhash(mixed, c, a, b, sig[i])
            _band_keys(sig[i], bands, rows, bkeys[i])
        pos += c
    return pos


@njit(cache=True, nogil=True)
def repeated_keys(keys, table_keys, table_count):
    """Mark the keys that occur at least twice (an open-addressing count over caller-given
    tables of a power-of-two size at least twice len(keys); contents are overwritten)."""
    mask_bits = _U(len(table_keys) - 1)
    table_count[:] = 0
    for i in range(len(keys)):
        k = keys[i]
        h = (k * _K0) >> _U(32)
        s = h & mask_bits
        while table_count[s] != 0 and table_keys[s] != k:
            s = (s + _U(1)) & mask_bits
        table_keys[s] = k
        if table_count[s] < 2:
            table_count[s] += 1
    out = np.empty(len(keys), np.bool_)
    for i in range(len(keys)):
        k = keys[i]
        h = (k * _K0) >> _U(32)
        s = h & mask_bits
        while table_keys[s] != k:
            s = (s + _U(1)) & mask_bits
        out[i] = table_count[s] > 1
    return out


@njit(cache=True, nogil=True)
def jaccard_pairs_hashed(values, offsets, a, b, table, stamp):
    """Jaccard of the sets of values of segments a[j] and b[j] (repeats allowed, any order):
    |A & B| / |A | B| (1.0 for two empty sets), by an open-addressing set per pair in the
    caller's `table` (uint32) and `stamp` (int64, zeroed) of a power-of-two size at least twice
    the longest segment."""
    out = np.empty(len(a), np.float64)
    mask_bits = _U(len(table) - 1)
    gen = 0
    for j in range(len(a)):
        gen += 2  # stamp gen: in A; gen + 1: in B (and possibly A)
        ua = 0
        for p in range(offsets[a[j]], offsets[a[j] + 1]):
            x = values[p]
            s = (_U(x) * _K1 >> _U(32)) & mask_bits
            while stamp[s] >= gen and table[s] != x:
                s = (s + _U(1)) & mask_bits
            if stamp[s] < gen:
                table[s] = x
                stamp[s] = gen
                ua += 1
        ub = 0
        inter = 0
        for p in range(offsets[b[j]], offsets[b[j] + 1]):
            x = values[p]
            s = (_U(x) * _K1 >> _U(32)) & mask_bits
            while stamp[s] >= gen and table[s] != x:
                s = (s + _U(1)) & mask_bits
            if stamp[s] < gen:  # only in B
                table[s] = x
                stamp[s] = gen + 1
                ub += 1
            elif stamp[s] == gen:  # in A, first time in B
                stamp[s] = gen + 1
                ub += 1
                inter += 1
        union = ua + ub - inter
        out[j] = inter / union if union else 1.0
    return out
