"""Token counts of a whole Parquet table of conversations, on every core (the mix step).

Counting every validated row's tokens dominated the mix step at a million rows: Hugging
Face `tokenizers` encodes about 1.3 M tokens per CPU-second here, and the mix needs the
count of every row (token quotas, the mixture's `n_tokens`, the report).

When the pipeline's tokenizer is a byte-level BPE with GPT-2's pre-tokenizer (the tokenizer
Tuneline trains for the tiny model; GPT-2 and the tokenizers built like it) and its chat
template is Tuneline's ChatML, the same vocabulary is loaded into a `tiktoken` Encoding,
which encodes about twice as fast per core, and the table's row groups are counted on a
thread per core. Conversations are rendered to the ChatML text in Arrow (no Python dict
per message).

Counts must equal what training tokenises, so nothing is taken on trust: every row group's
first `VERIFY_ROWS` conversations are also encoded by the tokenizer itself (its
`tokenizer.json`), and a single difference makes `count_table` return None; the caller then
counts everything with the tokenizer (`chat.count_tokens`). `count_table` also returns None
when the tokenizer or template does not qualify, or the table is small.

Chunk counts (the plain ChatML rows, nearly all of them): tiktoken itself spent about 2 s of
a core per 19,000-row row group at a million rows (440 M tokens in all). A conversation's
count is a sum of counts of text pieces that are encoded independently, and the same pieces
recur, so each distinct piece is encoded once per process and looked up afterwards:

- tiktoken encodes the text between special tokens separately. In the ChatML text those
  segments are `{role}\\n{content}` per message and the `\\n` after each `<|im_end|>`, as
  long as no special token occurs anywhere else; a row where one does (`ChunkCounts.chatml`)
  is encoded whole by tiktoken.
- Inside a segment, GPT-2's pre-tokenizer regex always ends a piece before a space that is
  followed by a character other than whitespace (only the whitespace alternatives take a
  space there, and a run of whitespace followed by such a space stops before it), and no
  alternative looks behind, so the segment split at every such space gives chunks whose pieces are exactly the
  segment's pieces. A segment is split with `split_pattern(" ")` when every space in it is
  followed by something other than whitespace (`_LOOSE_SPACE` finds the others); other
  segments (double spaces, a space before a newline or at the end) are encoded whole.
- The chunks of a row group are dictionary-encoded in Arrow; each distinct chunk's count
  comes from a per-process cache (`ChunkCounts`) or one tiktoken call, and per-row sums are
  NumPy bincounts. About 7x less CPU than encoding every row with tiktoken, with the same
  counts (the tokenizer check above still runs on every row group).

Where the row groups are counted: local threads (the chunk cache is shared; spawned
processes each started a cache of their own and cost seconds to start), or any
`concurrent.futures.Executor` the caller passes (the mix step passes a Dask client's
executor when the pipeline runs on a Dask cluster). A unit of work is one row group of one
Parquet file (`count_row_group`), which can also return key columns of its rows, so the
caller needs no second pass over the table.
"""
from __future__ import annotations

import concurrent.futures as cf
import functools
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.tokens import chat
from tasks.tokens.chat import CHATML_TEMPLATE, IM_END, IM_START

#: GPT-2's pre-tokenizer pattern, the one `pre_tokenizers.ByteLevel(use_regex=True)` applies.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
#: Conversations per row group also encoded by the tokenizer itself, to check the counts.
VERIFY_ROWS = 256
#: Tables with fewer rows are counted in-process by the caller.
PARALLEL_MIN = 50_000


def _byte_chars() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the printable character that stands for each byte."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def tiktoken_params(tokenizer_json: str | Path) -> tuple[dict | None, str]:
    """(`tiktoken.Encoding` keyword arguments, "") for a qualifying tokenizer, else (None, why not)."""
    path = Path(tokenizer_json)
    if not path.is_file():
        return None, f"no {path.name} (not a fast tokenizer)"
    spec = json.loads(path.read_text(encoding="utf-8"))
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    if spec.get("normalizer") is not None:
        return None, "the tokenizer has a normalizer"
    if pre.get("type") != "ByteLevel" or pre.get("add_prefix_space") or not pre.get("use_regex", True):
        return None, "the pre-tokenizer is not GPT-2's byte-level regex"
    if model.get("type") != "BPE" or model.get("dropout") or model.get("byte_fallback") \
            or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        return None, "the model is not a plain byte-level BPE"
    added = spec.get("added_tokens") or []
    if any(t.get("lstrip") or t.get("rstrip") or t.get("single_word") for t in added):
        return None, "an added token strips or matches whole words only"
    specials = {t["content"]: t["id"] for t in added}
    byte_of = _byte_chars()
    ranks: dict[bytes, int] = {}
    for token, rank in model.get("vocab", {}).items():
        if token in specials:
            continue
        if any(c not in byte_of for c in token):
            return None, f"vocabulary entry {token!r} is not byte-level"
        ranks[bytes(byte_of[c] for c in token)] = rank
    if len(ranks) != len(set(ranks.values())) or any(bytes([b]) not in ranks for b in range(256)):
        return None, "the vocabulary does not cover every byte once"
    return {"pat_str": GPT2_PATTERN, "mergeable_ranks": ranks, "special_tokens": specials}, ""


@functools.lru_cache(maxsize=4)
def _encoders(tokenizer_json: str):
    """(tiktoken Encoding, the tokenizer itself) for a tokenizer.json, once per process."""
    import tiktoken
    from tokenizers import Tokenizer

    params, why = tiktoken_params(tokenizer_json)
    if params is None:
        raise ValueError(f"{tokenizer_json}: {why}")
    return tiktoken.Encoding(Path(tokenizer_json).parent.name, **params), Tokenizer.from_file(tokenizer_json)


def chatml_texts(messages: pa.Array | pa.ChunkedArray, as_list: bool = True) -> list[str] | pa.Array:
    """Each conversation rendered with Tuneline's ChatML template, built in Arrow (a list of
    str, or with `as_list=False` the Arrow array).

    The same text as `chat.render_batch` gives for that template: per message
    `<|im_start|>{role}\\n{content}<|im_end|>\\n`, a null content as empty."""
    messages = messages.combine_chunks() if isinstance(messages, pa.ChunkedArray) else messages
    flat = messages.flatten()
    parts = [IM_START, flat.field("role").fill_null(""), "\n", flat.field("content").fill_null(""), IM_END + "\n"]
    per_message = pc.binary_join_element_wise(*parts, "")
    offsets = pc.subtract(messages.offsets, messages.offsets[0])
    joined = pc.binary_join(pa.ListArray.from_arrays(offsets, per_message), "").fill_null("")
    return joined.to_pylist() if as_list else joined


def plain_chat_rows(messages: pa.Array, tools: pa.Array | None) -> np.ndarray:
    """True for the rows `chatml_texts` renders as training does: no offered tools, no reasoning
    trace, no tool call, and not pretraining text (a lone assistant turn, rendered without a
    template). The others are rendered by `chat.render_batch`."""
    n = len(messages)
    flat = messages.flatten()
    parents = pc.list_parent_indices(messages).to_numpy()
    reasoning = pc.fill_null(pc.greater(pc.utf8_length(flat.field("reasoning")), 0), False)
    calls = pc.fill_null(pc.greater(pc.list_value_length(flat.field("tool_calls")), 0), False)
    special = np.bincount(parents, weights=pc.or_(reasoning, calls).to_numpy(zero_copy_only=False).astype(float),
                          minlength=n) > 0
    lengths = pc.list_value_length(messages).fill_null(0).to_numpy(zero_copy_only=False)
    starts = pc.subtract(messages.offsets, messages.offsets[0]).to_numpy()[:-1]
    text = np.zeros(n, bool)  # a lone assistant turn
    lone = np.flatnonzero(lengths == 1)
    if len(lone):
        roles = flat.field("role").take(pa.array(starts[lone]))
        text[lone] = pc.fill_null(pc.equal(roles, "assistant"), False).to_numpy(zero_copy_only=False)
    offered = np.zeros(n, bool) if tools is None else pc.and_(
        pc.is_valid(tools), pc.invert(pc.is_in(tools, pa.array(["", "[]", "null"])))).to_numpy(zero_copy_only=False)
    return ~(special | text | offered)


@functools.lru_cache(maxsize=4)
def _chat_tokenizer(directory: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory)


def rendered_texts(tokenizer_json: str, table: pa.Table, reasoning: str) -> list[str]:
    """Each row's conversation as training renders it: plain chats in Arrow (`chatml_texts`),
    rows with tools, reasoning, tool calls or pretraining text by `chat.render_batch`."""
    messages = table.column("messages").combine_chunks()
    tools = table.column("tools").combine_chunks() if "tools" in table.column_names else None
    texts = chatml_texts(messages)
    other = np.flatnonzero(~plain_chat_rows(messages, tools))
    if len(other):
        idx = pa.array(other)
        rendered = chat.render_batch(_chat_tokenizer(str(Path(tokenizer_json).parent)),
                                     messages.take(idx).to_pylist(),
                                     None if tools is None else tools.take(idx).to_pylist(), reasoning)
        for i, text in zip(other, rendered):
            texts[i] = text
    return texts


#: The characters `\s` matches in the pre-tokenizer's regex (Unicode White_Space), as an RE2 class.
_WHITESPACE = r"[\t\n\x0B\f\r \x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000}]"
#: A space that does not start a piece: followed by whitespace, or the last character.
_LOOSE_SPACE = f" (?:{_WHITESPACE}|$)"
#: Distinct chunks a process keeps counts of (per tokenizer); past this the cache starts over.
CACHE_CHUNKS = 2_000_000


class ChunkCounts:
    """Token counts of text chunks under one encoding, each chunk encoded once (module docstring)."""

    def __init__(self, encoding):
        self.encoding = encoding
        self.first: dict[str, int] = {}  # a segment's first chunk, as it is
        self.later: dict[str, int] = {}  # a later chunk, which follows a space: counts of " " + chunk
        self.newline = len(encoding.encode_ordinary("\n"))
        specials = sorted(encoding.special_tokens_set)
        # A special token inside a segment is found by searching the segments alone when no
        # special token overlaps another (a suffix of one is never a prefix of one) or holds
        # another, and "\n" is none: then an occurrence across a template literal is impossible.
        self.segments_tell = IM_START in specials and IM_END in specials and "\n" not in specials and not any(
            a != b and a in b for a in specials for b in specials) and not any(
            a[-k:] == b[:k] for a in specials for b in specials for k in range(1, min(len(a), len(b))))
        self.special = "|".join("".join(f"\\x{{{ord(c):X}}}" for c in t) for t in specials)

    def _lookup(self, cache: dict[str, int], chunks: list[str], prefix: str) -> np.ndarray:
        if len(cache) + len(chunks) > CACHE_CHUNKS:
            cache.clear()
        out = np.empty(len(chunks), np.int64)
        encode = self.encoding.encode_ordinary
        for i, chunk in enumerate(chunks):
            n = cache.get(chunk)
            if n is None:
                n = cache[chunk] = len(encode(prefix + chunk))
            out[i] = n
        return out

    def segments(self, segments: pa.Array) -> np.ndarray:
        """Token count of each segment (text that holds no special token), encoded on its own."""
        chunks = pc.split_pattern(segments, " ")  # every segment has at least one chunk
        encoded = pc.dictionary_encode(chunks.flatten())
        codes = encoded.indices.to_numpy()
        starts = pc.subtract(chunks.offsets, chunks.offsets[0]).to_numpy()[:-1]
        distinct = encoded.dictionary.to_pylist()
        as_first = np.bincount(codes[starts], minlength=len(distinct))
        as_later = np.bincount(codes, minlength=len(distinct)) - as_first
        luts = []
        for used, cache, prefix in ((as_first > 0, self.first, ""), (as_later > 0, self.later, " ")):
            at = np.flatnonzero(used)
            lut = np.zeros(len(distinct), np.int64)
            lut[at] = self._lookup(cache, [distinct[i] for i in at.tolist()], prefix)
            luts.append(lut)
        per_chunk = luts[1][codes]
        per_chunk[starts] = luts[0][codes[starts]]
        counts = np.add.reduceat(per_chunk, starts) if len(starts) else np.zeros(0, np.int64)
        loose = pc.fill_null(pc.match_substring_regex(segments, _LOOSE_SPACE), False).to_numpy(zero_copy_only=False)
        for i in np.flatnonzero(loose).tolist():
            counts[i] = len(self.encoding.encode_ordinary(segments[i].as_py()))
        return counts

    def chatml(self, messages: pa.ListArray) -> tuple[np.ndarray, np.ndarray]:
        """(token count of each conversation's ChatML text, whether that count holds): it does
        when no special token occurs in the text but the template's own `<|im_start|>` and
        `<|im_end|>`, so the text splits where the template does."""
        flat = messages.flatten()
        segments = pc.binary_join_element_wise(flat.field("role").fill_null(""), flat.field("content").fill_null(""), "\n")
        per_message = self.segments(segments) + 2 + self.newline  # <|im_start|>, <|im_end|>, "\n"
        lengths = pc.list_value_length(messages).fill_null(0).to_numpy(zero_copy_only=False)
        row = np.repeat(np.arange(len(messages)), lengths)
        counts = np.bincount(row, weights=per_message, minlength=len(messages)).astype(np.int64)
        if not self.segments_tell:
            return counts, np.zeros(len(messages), bool)
        special = pc.match_substring_regex(segments, self.special).to_numpy(zero_copy_only=False)
        return counts, np.bincount(row, weights=special, minlength=len(messages)) == 0


@functools.lru_cache(maxsize=4)
def _chunk_counts(tokenizer_json: str) -> ChunkCounts:
    return ChunkCounts(_encoders(tokenizer_json)[0])


def conversation_counts(tokenizer_json: str, table: pa.Table, reasoning: str = "keep") -> np.ndarray:
    """Token count of each row's conversation as training renders it: chunk counts for plain
    ChatML rows without stray special tokens, tiktoken on the rendered text for the others."""
    fast, _ = _encoders(tokenizer_json)
    chunks = _chunk_counts(tokenizer_json)
    messages = table.column("messages").combine_chunks()
    tools = table.column("tools").combine_chunks() if "tools" in table.column_names else None
    counts, easy = chunks.chatml(messages)
    hard = np.flatnonzero(~(easy & plain_chat_rows(messages, tools)))
    if len(hard):
        texts = rendered_texts(tokenizer_json, table.take(pa.array(hard)), reasoning)
        counts[hard] = [len(fast.encode(t, allowed_special="all")) for t in texts]
    return counts


def count_row_group(tokenizer_json: str, path: str, row_group: int, reasoning: str = "keep",
                    columns: tuple[str, ...] = ()) -> tuple[np.ndarray | pa.Table, str | None]:
    """(token count per row, None) of one row group's conversations; (counts, what differed) when
    the tokenizer itself disagrees on one of the first VERIFY_ROWS conversations. With `columns`,
    the counts come as column `n_tokens` of a table that also holds those columns of the rows."""
    _, reference = _encoders(tokenizer_json)
    pf = pq.ParquetFile(path)
    wanted = [c for c in ("messages", "tools") if c in pf.schema_arrow.names]
    table = pf.read_row_group(row_group, columns=list(dict.fromkeys([*wanted, *columns])))
    counts = conversation_counts(tokenizer_json, table, reasoning)
    check = rendered_texts(tokenizer_json, table.slice(0, VERIFY_ROWS), reasoning)
    differs = None
    for k, enc in enumerate(reference.encode_batch_fast(check, add_special_tokens=False)):
        if len(enc) != counts[k]:
            differs = f"{path} row group {row_group} row {k}: tiktoken {counts[k]} tokens, tokenizer {len(enc)}"
            break
    if columns:
        return table.select(list(columns)).append_column("n_tokens", pa.array(counts, pa.int64())), differs
    return counts, differs


def count_table(paths: list[Path], tokenizer_json: str | Path, chat_template: str | None,
                workers: int | None = None, min_rows: int | None = None,
                reasoning: str = "keep", executor: cf.Executor | None = None) -> tuple[np.ndarray | None, str]:
    """(tokens of every row of the Parquet files, in order, how they were counted), or
    (None, why not) when the caller must count with the tokenizer itself."""
    table, how = count_columns(paths, tokenizer_json, chat_template, workers, min_rows, reasoning, executor)
    return (None if table is None else table.column("n_tokens").to_numpy()), how


def count_columns(paths: list[Path], tokenizer_json: str | Path, chat_template: str | None,
                  workers: int | None = None, min_rows: int | None = None, reasoning: str = "keep",
                  executor: cf.Executor | None = None, columns: tuple[str, ...] = (),
                  progress: Callable[[int], None] | None = None) -> tuple[pa.Table | None, str]:
    """`count_table`, the counts as column `n_tokens` of a table with `columns` of every row (in
    order). Row groups go to `executor` when one is given (any table size), else to a pool of
    `workers` spawned processes (tables of at least `min_rows`, default PARALLEL_MIN).
    `progress` is called with the rows of each row group counted."""
    if chat_template != CHATML_TEMPLATE:
        return None, "the chat template is not Tuneline's ChatML"
    params, why = tiktoken_params(tokenizer_json)
    if params is None:
        return None, why
    files = {str(p): pq.ParquetFile(p).metadata for p in paths}
    units = [(p, g) for p, meta in files.items() for g in range(meta.num_row_groups)]
    rows = sum(meta.num_rows for meta in files.values())
    if executor is None and (rows < (PARALLEL_MIN if min_rows is None else min_rows) or not units):
        return None, f"{rows:,} rows: counted in-process"
    if executor is not None:
        where = f"tiktoken on {type(executor).__name__}"
        parts = _run(executor, units, str(tokenizer_json), reasoning, tuple(columns), progress)
    else:  # threads: Arrow, NumPy and tiktoken work without the GIL, and the chunk cache is shared
        workers = min(workers or os.cpu_count() or 1, len(units))
        where = f"tiktoken on {workers} threads"
        with cf.ThreadPoolExecutor(workers, thread_name_prefix="token-count") as pool:
            parts = _run(pool, units, str(tokenizer_json), reasoning, tuple(columns), progress)
    if isinstance(parts, str):
        return None, f"tiktoken disagrees with the tokenizer ({parts})"
    how = (f"{where} (chunk counts), checked against the tokenizer on "
           f"{sum(min(t.num_rows, VERIFY_ROWS) for t in parts):,} rows")
    schema = pa.schema([*(pq.read_schema(next(iter(files))).field(c) for c in columns), ("n_tokens", pa.int64())]) \
        if files else pa.schema([("n_tokens", pa.int64())])
    return pa.concat_tables([t.cast(schema) for t in parts]) if parts else schema.empty_table(), how


def _run(executor: cf.Executor, units: list[tuple[str, int]], tokenizer_json: str, reasoning: str,
         columns: tuple[str, ...], progress: Callable[[int], None] | None) -> list[pa.Table] | str:
    """Every unit's table, in order; or the first disagreement (the other units are cancelled)."""
    futures = [executor.submit(count_row_group, tokenizer_json, p, g, reasoning, columns) for p, g in units]
    parts = []
    for fut in futures:
        out, differs = fut.result()
        if differs:
            for f in futures:
                f.cancel()
            return differs
        parts.append(out if columns else pa.table({"n_tokens": pa.array(out, pa.int64())}))
        if progress is not None:
            progress(parts[-1].num_rows)
    return parts
