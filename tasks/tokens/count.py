"""Token counts of a whole Parquet table of conversations, on every core (the mix step).

Counting every validated row's tokens dominated the mix step at a million rows: Hugging
Face `tokenizers` encodes about 1.3 M tokens per CPU-second here, and the mix needs the
count of every row (token quotas, the mixture's `n_tokens`, the report).

When the pipeline's tokenizer is a byte-level BPE with GPT-2's pre-tokenizer (the tokenizer
Tuneline trains for the tiny model; GPT-2 and the tokenizers built like it) and its chat
template is Tuneline's ChatML, the same vocabulary is loaded into a `tiktoken` Encoding,
which encodes about twice as fast per core, and the table's row groups are counted by
spawned worker processes, one per core. Conversations are rendered to the ChatML text in
Arrow (no Python dict per message).

Counts must equal what training tokenises, so nothing is taken on trust: every row group's
first `VERIFY_ROWS` conversations are also encoded by the tokenizer itself (its
`tokenizer.json`), and a single difference makes `count_table` return None; the caller then
counts everything with the tokenizer (`chat.count_tokens`). `count_table` also returns None
when the tokenizer or template does not qualify, or the table is small (the pool's start-up
would cost more than it saves).
"""
from __future__ import annotations

import concurrent.futures as cf
import functools
import json
import multiprocessing
import os
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


def chatml_texts(messages: pa.Array | pa.ChunkedArray) -> list[str]:
    """Each conversation rendered with Tuneline's ChatML template, built in Arrow.

    The same text as `chat.render_batch` gives for that template: per message
    `<|im_start|>{role}\\n{content}<|im_end|>\\n`, a null content as empty."""
    messages = messages.combine_chunks() if isinstance(messages, pa.ChunkedArray) else messages
    flat = messages.flatten()
    parts = [IM_START, flat.field("role").fill_null(""), "\n", flat.field("content").fill_null(""), IM_END + "\n"]
    per_message = pc.binary_join_element_wise(*parts, "")
    offsets = pc.subtract(messages.offsets, messages.offsets[0])
    joined = pc.binary_join(pa.ListArray.from_arrays(offsets, per_message), "")
    return joined.fill_null("").to_pylist()


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


def count_row_group(tokenizer_json: str, path: str, row_group: int,
                    reasoning: str = "keep") -> tuple[np.ndarray, str | None]:
    """(token count per row, None) of one row group's conversations; (counts, what differed) when
    the tokenizer itself disagrees on one of the first VERIFY_ROWS conversations."""
    fast, reference = _encoders(tokenizer_json)
    pf = pq.ParquetFile(path)
    columns = [c for c in ("messages", "tools") if c in pf.schema_arrow.names]
    texts = rendered_texts(tokenizer_json, pf.read_row_group(row_group, columns=columns), reasoning)
    counts = np.fromiter((len(fast.encode(t, allowed_special="all")) for t in texts), np.int64, len(texts))
    check = texts[:VERIFY_ROWS]
    for k, enc in enumerate(reference.encode_batch_fast(check, add_special_tokens=False)):
        if len(enc) != counts[k]:
            return counts, f"{path} row group {row_group} row {k}: tiktoken {counts[k]} tokens, tokenizer {len(enc)}"
    return counts, None


def count_table(paths: list[Path], tokenizer_json: str | Path, chat_template: str | None,
                workers: int | None = None, min_rows: int | None = None,
                reasoning: str = "keep") -> tuple[np.ndarray | None, str]:
    """(tokens of every row of the Parquet files, in order, how they were counted), or
    (None, why not) when the caller must count with the tokenizer itself."""
    if chat_template != CHATML_TEMPLATE:
        return None, "the chat template is not Tuneline's ChatML"
    params, why = tiktoken_params(tokenizer_json)
    if params is None:
        return None, why
    files = {str(p): pq.ParquetFile(p).metadata for p in paths}
    units = [(p, g) for p, meta in files.items() for g in range(meta.num_row_groups)]
    rows = sum(meta.num_rows for meta in files.values())
    if rows < (PARALLEL_MIN if min_rows is None else min_rows) or not units:
        return None, f"{rows:,} rows: counted in-process"
    workers = workers or os.cpu_count() or 1
    ctx = multiprocessing.get_context("spawn")  # no forked copy of a tokenizer's thread pool
    with cf.ProcessPoolExecutor(min(workers, len(units)), mp_context=ctx) as pool:
        futures = [pool.submit(count_row_group, str(tokenizer_json), p, g, reasoning) for p, g in units]
        parts = []
        for fut in futures:
            counts, differs = fut.result()
            if differs:
                for f in futures:
                    f.cancel()
                return None, f"tiktoken disagrees with the tokenizer ({differs})"
            parts.append(counts)
    how = (f"tiktoken on {min(workers, len(units))} processes, checked against the tokenizer on "
           f"{sum(min(len(c), VERIFY_ROWS) for c in parts):,} rows")
    return (np.concatenate(parts) if parts else np.zeros(0, np.int64)), how
