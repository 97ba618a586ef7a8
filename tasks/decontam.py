"""Benchmark decontamination: word n-gram overlap of training user turns with eval prompts.

The approach of GPT-3 and NeMo Curator: a training row is contaminated when one of its
user turns shares a word n-gram (default 13) with an evaluation prompt. Evaluation
prompts come from the project's own held-out split (`records_eval` user turns, bench
name `heldout`, item id = record_id) and from benchmark files the recipe lists.

The prompt side of a record (`prompt_turn`, both sides): its user turns, its tool results (text
the model reads, like a user turn) and, for pretraining text (one assistant turn alone), that
text. Assistant replies, reasoning traces and tool calls are what the model writes: they are
not prompts, so they are not matched.

A held-out row's few-shot exemplars (the leading `shots_chars` characters of its first
user turn, FLAN CoT) are training examples, not part of the held-out item, so they are
left out of its prompt: a training row that repeats them is not contaminated.

Normalisation (both sides, in Polars): lower-case (Unicode lowercase, our casefold),
every character that is not a letter, digit or whitespace replaced by a space (so
"time-management" and "time management" agree), whitespace runs
folded to one space, trimmed. Words are the space-separated tokens of that text.

Prompts shorter than n words are matched whole, so short benchmark questions are not
missed: a prompt of k words with `short_min_words` <= k < n matches a training turn
that contains it as a run of whole words (found through the hash of the prompt's first
`short_min_words` words, then checked as a substring of the padded normalised turn);
a prompt of fewer than `short_min_words` words (e.g. "Hi", "Tell me") matches only a
training turn equal to it after normalisation, so tiny prompts do not flood false
positives.

Everything is hash joins over 64-bit n-gram hashes (word hashes from Polars `hash(seed=0)`
combined per position, both sides hashed in the same process), one batch of training rows at
a time; no Python loop over pairs. (A first version built the n-grams with DuckDB list lambdas; slicing a list per
gram made it 4x slower than Polars shifts.)
"""
from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from tasks.config import BenchmarkConfig, DecontaminationConfig, Recipe, glob_files
from tasks.errors import RecipeError

HELDOUT = "heldout"
PL_EMPTY_BOILERPLATE = pl.DataFrame(schema={"bench": pl.String, "h": pl.UInt64})
# group: the evaluation item a prompt belongs to (a held-out row's example_id, so template
# variants of one example count once; a benchmark row's id, shared by its turns).
PROMPTS = pa.schema([("bench", pa.string()), ("item_id", pa.string()), ("text", pa.string()), ("group", pa.string())])
TURNS = pa.schema([("row_idx", pa.int64()), ("text", pa.string())])
MATCHES = pa.schema([("row_idx", pa.int64()), ("bench", pa.string()), ("item_id", pa.string())])
#: Record meta key: characters at the start of the first user turn that are few-shot exemplars
#: (training examples, tasks.ingest.flan), left out of a held-out prompt: not the item's own text.
SHOTS_CHARS = "shots_chars"



# -- benchmark files -----------------------------------------------------------------
def benchmark_files(recipe: Recipe, bench: BenchmarkConfig) -> list[str]:
    """The files a benchmark names (a path or a glob), sorted; RecipeError when none."""
    return glob_files(bench.path, recipe.resolve(bench.path), f"benchmark {bench.name!r}")


def _format(bench: BenchmarkConfig, file: str) -> str:
    if bench.format != "auto":
        return bench.format
    ext = Path(file).suffix.lower()
    fmt = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv"}.get(ext)
    if fmt is None:
        raise RecipeError(f"{file}: benchmark {bench.name!r}: cannot tell the format from {ext!r}; set format")
    return fmt


def _rows(bench: BenchmarkConfig, file: str) -> Iterator[tuple[int, dict]]:
    """(1-based row number, row as a dict) of one benchmark file."""
    fmt = _format(bench, file)
    if fmt == "jsonl":
        with open(file, encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        yield line_no, json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise RecipeError(f"{file}:{line_no}: not valid JSON: {exc.msg}") from None
    elif fmt == "json":
        try:
            data = json.loads(Path(file).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise RecipeError(f"{file}: not valid JSON: {exc}") from None
        if not isinstance(data, list):
            raise RecipeError(f"{file}: benchmark {bench.name!r}: expected a JSON array of objects")
        yield from enumerate(data, 1)
    else:
        with open(file, encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None) if bench.csv_header else None
            for row_no, values in enumerate(reader, 1):
                names = header if header is not None else [str(i) for i in range(len(values))]
                yield row_no, dict(zip(names, values))


def _fields(bench: BenchmarkConfig) -> list[str]:
    return [bench.field] if isinstance(bench.field, str) else list(bench.field)


def _check_row(bench: BenchmarkConfig, file: str, row_no: int, row) -> None:
    if not isinstance(row, dict):
        raise RecipeError(f"{file}:{row_no}: benchmark {bench.name!r}: expected an object, got {type(row).__name__}")
    for f in _fields(bench) + ([bench.id_field] if bench.id_field else []):
        if row.get(f) is None:
            raise RecipeError(
                f"{file}:{row_no}: benchmark {bench.name!r}: field {f!r} missing; "
                f"row has fields {sorted(row)[:20]}"
            )


def check_benchmarks(recipe: Recipe) -> None:
    """Every benchmark file exists and its first row has the prompt (and id) field(s).

    Cheap: reads one row per JSONL/CSV file; called at recipe load and before training data is read.
    """
    for bench in recipe.validate_cfg.decontamination.benchmarks:
        for file in benchmark_files(recipe, bench):
            first = next(_rows(bench, file), None)
            if first is None:
                raise RecipeError(f"{file}: benchmark {bench.name!r} has no rows")
            _check_row(bench, file, *first)


def benchmark_prompts(recipe: Recipe, bench: BenchmarkConfig) -> pa.Table:
    """(bench, item_id, text, group) of every prompt of one benchmark; list values become
    `<id>:<j>` items of group `<id>`."""
    files = benchmark_files(recipe, bench)
    out: dict[str, list] = {"bench": [], "item_id": [], "text": [], "group": []}
    for file in files:
        prefix = f"{Path(file).stem}:" if len(files) > 1 else ""
        for row_no, row in _rows(bench, file):
            _check_row(bench, file, row_no, row)
            item = prefix + str(row[bench.id_field] if bench.id_field else row_no)
            for f in _fields(bench):
                value = row[f]
                items = [(item, value)] if not isinstance(value, list) else [
                    (f"{item}:{j}", v) for j, v in enumerate(value, 1)
                ]
                for item_id, text in items:
                    if not isinstance(text, (str, int, float)):
                        raise RecipeError(
                            f"{file}:{row_no}: benchmark {bench.name!r}: field {f!r}: expected text, "
                            f"got {type(text).__name__}"
                        )
                    out["bench"].append(bench.name)
                    out["item_id"].append(item_id)
                    out["text"].append(str(text))
                    out["group"].append(item)
    return pa.table(out, schema=PROMPTS)


def prompt_turn(group: str) -> pl.Expr:
    """True for the turns decontamination matches (module docstring), over exploded messages
    grouped by `group` (one value per record)."""
    lone = (pl.len().over(group) == 1) & (pl.col("role") == "assistant")
    return pl.col("role").is_in(["user", "tool"]) | lone


def user_turns(records, row_offset: int = 0) -> pa.Table:
    """(row_idx, text) of every prompt turn (`prompt_turn`: user turns, tool results, pretraining
    text) of RECORDS rows (Polars frame, Arrow table or batch).

    row_idx is the row's position in `records` plus row_offset.
    """

    if isinstance(records, pa.RecordBatch):
        records = pa.Table.from_batches([records])
    df = records if isinstance(records, pl.DataFrame) else pl.from_arrow(records.select(["messages"]))
    turns = (
        df.select("messages").with_row_index("row_idx", offset=row_offset)
        .explode("messages")
        .drop_nulls("messages")
        .unnest("messages")
        .filter(prompt_turn("row_idx"))
        .select(pl.col("row_idx").cast(pl.Int64), pl.col("content").alias("text"))
    )
    return turns.to_arrow().cast(TURNS)


# -- matching --------------------------------------------------------------------------
def _normalised(text: pl.Expr) -> pl.Expr:
    """Lower case; every run of characters that are not letters or digits (of any script:
    Rust regex \\p{L}/\\p{N}) becomes one space; ends stripped.

    Done in two replacements, runs of other characters than spaces first, then runs of spaces:
    the same text, but most texts' separators are single spaces, which then need no
    replacement (4x faster than replacing `[^\\p{L}\\p{N}]+` at each space)."""
    return (text.str.to_lowercase().str.replace_all(r"[^\p{L}\p{N} ]+", " ").str.replace_all(r"  +", " ")
            .str.strip_chars())


def _words(frame: pl.DataFrame) -> pl.DataFrame:
    """Adds `norm` (normalised text) and `n_words`; drops texts with no word."""
    return (
        frame.with_columns(_normalised(pl.col("text")).alias("norm"))
        .filter(pl.col("norm") != "")
        .with_columns((pl.col("norm").str.count_matches(" ") + 1).alias("n_words"))
    )


#: Base of the polynomial gram hash (odd, so invertible modulo 2**64) and its inverse.
_BASE = np.uint64(0x9E3779B97F4A7C15)
_BASE_INV = np.uint64(pow(int(_BASE), -1, 1 << 64))


_POWERS: dict[int, np.ndarray] = {}


def _powers(base: np.uint64, n: int) -> np.ndarray:
    """base**k modulo 2**64 for k in 0..n-1 (kept and grown: cumprod over uint64 is slow)."""
    have = _POWERS.get(int(base))
    if have is None or len(have) < n:
        size = max(n, 2 * len(have) if have is not None else 1 << 16)
        steps = np.full(size, base, np.uint64)
        steps[0] = 1
        with np.errstate(over="ignore"):
            have = _POWERS[int(base)] = np.cumprod(steps, dtype=np.uint64)
    return have[:n]


def _window_prefix(word_hashes: np.ndarray) -> np.ndarray:
    """The prefix sums `_window_hashes` takes its windows from: w[m] * B**-m summed."""
    prefix = np.zeros(len(word_hashes) + 1, np.uint64)
    with np.errstate(over="ignore"):
        np.cumsum(word_hashes * _powers(_BASE_INV, len(word_hashes)), dtype=np.uint64, out=prefix[1:])
    return prefix


def _window_hashes(word_hashes: np.ndarray, n: int, prefix: np.ndarray | None = None) -> np.ndarray:
    """For every run of n consecutive word hashes w[i..i+n-1]: sum_j w[i+j] * B**(n-1-j)
    modulo 2**64, from one prefix sum (w[m] * B**-m summed, then times B**(i+n-1));
    `prefix` (`_window_prefix` of the same hashes) is reused for several n."""
    m = len(word_hashes)
    if m < n:
        return np.empty(0, np.uint64)
    if prefix is None:
        prefix = _window_prefix(word_hashes)
    with np.errstate(over="ignore"):
        return (prefix[n:] - prefix[: m - n + 1]) * _powers(_BASE, m)[n - 1 :]


def _grams(frame: pl.DataFrame, n: int, keys: list[str]) -> pl.DataFrame:
    """`keys` + `h`: a 64-bit hash of every run of n consecutive words of each text, in
    text order and word order; `_word` is the global index of the gram's first word.

    Each word is hashed once (Polars); a gram's hash is a polynomial in its word hashes,
    computed for all windows at once from a prefix sum (NumPy, wrapping uint64), so no gram
    string is ever built. Words of one text are contiguous after explode, so a window lies
    inside one text iff its last word belongs to the same text as its first.
    """
    w = frame.with_row_index("_text").select("_text", *keys, pl.col("norm").str.split(" ").alias("w")).explode("w")
    h = _window_hashes(w["w"].hash(seed=0).to_numpy(), n)
    text = w["_text"].to_numpy()
    inside = text[n - 1 :] == text[: len(h)]
    return (w.select(keys).with_row_index("_word").head(len(h)).filter(pl.Series(inside))
            .with_columns(h=pl.Series(h[inside])))


#: Words padding each eval prompt for template detection (normalised text never holds them).
_EDGE_START, _EDGE_END = "\x02", "\x03"


def _window_counts(flags: np.ndarray, start: np.ndarray, n: int) -> np.ndarray:
    """How many of the n words from each `start` have their flag set."""
    prefix = np.concatenate([[0], np.cumsum(flags, dtype=np.int64)])
    return prefix[start + n] - prefix[start]


def _item_grams(prompts: pl.DataFrame, n: int, boilerplate_items: int, min_item_words: int):
    """(the n-grams of eval prompts that say something about their item, the template n-grams).

    An n-gram that `boilerplate_items` or more distinct items of one benchmark share ("Read
    the following article and answer the question ...", MMLU's header, a FLAN phrasing in
    a Tuneline template) is template text: it says nothing about any one item, and would
    flag every training row rendered from the same template. Template text plus a word or
    two ("... is the following a verifiable fact? The") is shared by too few items to be
    template text itself, yet says nothing either, so an n-gram counts only when at least
    `min_item_words` of its words lie outside every template n-gram. Each prompt is padded
    with n-1 edge words on both sides for this, so a template shorter than n words at the
    start or end of prompts is found as well.
    """
    edge_start, edge_end = " ".join([_EDGE_START] * (n - 1)), " ".join([_EDGE_END] * (n - 1))
    padded = prompts.with_columns(pl.concat_str([pl.lit(edge_start), "norm", pl.lit(edge_end)], separator=" ").alias("norm"))
    grams = _grams(padded, n, ["bench", "item_id", "group"])
    boilerplate = (grams.group_by("bench", "h").agg(pl.col("group").n_unique().alias("items"))
                   .filter(pl.col("items") >= boilerplate_items))
    template = grams.join(boilerplate.select("bench", "h", pl.lit(True).alias("_t")), on=["bench", "h"],
                          how="left", maintain_order="left")["_t"].fill_null(False).to_numpy()
    words = padded["norm"].str.split(" ").explode()
    start = grams["_word"].to_numpy().astype(np.int64)
    cover = np.zeros(len(words) + 1, np.int64)  # +1 where a template n-gram starts, -1 after it
    np.add.at(cover, start[template], 1)
    np.add.at(cover, start[template] + n, -1)
    item_words = _window_counts(np.cumsum(cover)[:-1] == 0, start, n)
    real = _window_counts(words.is_in([_EDGE_START, _EDGE_END]).to_numpy(), start, n) == 0
    keep = real & (item_words >= min(min_item_words, n))
    return grams.filter(pl.Series(keep)), grams.filter(pl.Series(real & template)).select("bench", "h").unique()


def _hash_words(norm: pl.Expr) -> pl.Expr:
    """Hash of a whole normalised text (tiny prompts are matched by equality)."""
    return norm.hash(seed=0)


class HashFilter:
    """A table of the top bits of a set of 64-bit hashes (about 8 slots per hash, at most 2**26):
    `may_hold` is True for every hash of the set and for few others, so the hash join that
    follows runs on few rows."""

    def __init__(self, hashes: np.ndarray):
        bits = int(min(max(np.ceil(np.log2(max(len(hashes), 1))) + 3, 16), 26))
        self.shift = np.uint64(64 - bits)
        self.map = np.zeros(1 << bits, bool)
        self.map[np.asarray(hashes, np.uint64) >> self.shift] = True

    def may_hold(self, hashes: np.ndarray) -> np.ndarray:
        return self.map[hashes >> self.shift]


class Decontaminator:
    """Holds the evaluation hash tables; `match` finds contaminated training rows (Polars joins)."""

    def __init__(self, prompts: pa.Table, cfg: DecontaminationConfig):
        self._thread: ThreadPoolExecutor | None = None
        self.n, self.short_min = cfg.ngram, cfg.short_min_words
        p = _words(pl.from_arrow(prompts))
        n, short = self.n, self.short_min
        # Long prompts: their n-gram hashes, less template text (_item_grams).
        long_p = p.filter(pl.col("n_words") >= n)
        if cfg.boilerplate_items:
            grams, self.boilerplate = _item_grams(long_p, n, cfg.boilerplate_items, cfg.min_item_words)
        else:
            grams, self.boilerplate = _grams(long_p, n, ["bench", "item_id", "group"]), PL_EMPTY_BOILERPLATE
        self.eval_grams = grams.select("bench", "item_id", "h").unique()
        # Short prompts: keyed by the hash of their first `short` words (a training turn's
        # `short`-gram), then verified as a whole-word substring; keeps the gram table 2x, not 10x.
        short_p = p.filter((pl.col("n_words") >= short) & (pl.col("n_words") < n)).with_row_index("_p")
        first_words = short_p.select("_p", pl.col("norm").str.split(" ").list.head(short).list.join(" "))
        self.eval_short = short_p.join(_grams(first_words, short, ["_p"]), on="_p").select(
            "h", (" " + pl.col("norm") + " ").alias("padded"), "bench", "item_id",
        )
        # Tiny prompts: equality of the whole normalised text.
        self.eval_exact = p.filter(pl.col("n_words") < short).select(
            _hash_words(pl.col("norm")).alias("h"), "bench", "item_id"
        ).unique()
        self.gram_filter = HashFilter(self.eval_grams["h"].to_numpy())
        self.short_filter = HashFilter(self.eval_short["h"].to_numpy())
        self.n_prompts = p.height
        self.n_grams = self.eval_grams.height
        self.n_boilerplate = self.boilerplate.height  # n-grams left out as template text

    def match(self, turns: pa.Table) -> pa.Table:
        """One (row_idx, bench, item_id) per contaminated training row; the smallest match wins.

        Each training word is hashed once; the n-gram and `short`-gram hashes of every window
        come from those (`_window_hashes`), and only windows that pass a bitmap of the eval
        side's hashes (`HashFilter`) are joined with the eval tables."""
        if turns.num_rows == 0 or self.n_prompts == 0:
            return MATCHES.empty_table()
        n, short = self.n, self.short_min
        t = pl.from_arrow(turns).with_columns(_normalised(pl.col("text")).alias("norm")).filter(pl.col("norm") != "")
        t = t.with_columns(pl.col("norm").str.split(" ").alias("_w")).with_columns(pl.col("_w").list.len().alias("n_words"))
        words = t.select(pl.col("_w").explode().hash(seed=0))["_w"].to_numpy()  # `_words` and `_grams`, split once
        text_of_word = np.repeat(np.arange(t.height), t["n_words"].to_numpy())
        row_of_text = t["row_idx"].to_numpy()
        prefix = _window_prefix(words)

        def windows(k: int, keep: HashFilter) -> pl.DataFrame:
            """(row_idx, h) of the k-word windows inside one text whose hash may be an eval hash."""
            h = _window_hashes(words, k, prefix)
            at = np.flatnonzero((text_of_word[k - 1 :] == text_of_word[: len(h)]) & keep.may_hold(h))
            return pl.DataFrame({"row_idx": row_of_text[text_of_word[at]], "h": h[at]},
                                schema={"row_idx": pl.Int64, "h": pl.UInt64})

        found = [windows(n, self.gram_filter).join(self.eval_grams, on="h")]
        if self.eval_short.height:
            cand = windows(short, self.short_filter).join(self.eval_short, on="h").unique(["row_idx", "bench", "item_id"])
            cand = cand.join(t.group_by("row_idx").agg((" " + pl.col("norm") + " ").alias("turns")), on="row_idx")
            # a row may have several user turns: any of them containing the prompt counts
            found.append(cand.explode("turns").filter(pl.col("turns").str.contains(pl.col("padded"), literal=True)))
        if self.eval_exact.height:
            found.append(
                t.filter(pl.col("n_words") < short).with_columns(_hash_words(pl.col("norm")).alias("h"))
                .join(self.eval_exact, on="h")
            )
        cols = ["row_idx", "bench", "item_id"]
        m = pl.concat([f.select(cols) for f in found]).sort(cols).unique("row_idx", keep="first", maintain_order=True)
        return m.to_arrow().cast(MATCHES)

    def match_later(self, turns: pa.Table) -> Callable[[], pa.Table]:
        """`match`, started now on a thread of its own (Polars and NumPy do most of it without
        the GIL) and collected by calling the result: the caller works on meanwhile."""
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="decontam")
        return self._thread.submit(self.match, turns).result

    def close(self) -> None:
        """Stop the thread `match_later` started."""
        if self._thread is not None:
            self._thread.shutdown()
            self._thread = None


def eval_prompts(recipe: Recipe, heldout_turns: pa.Table | None) -> pa.Table:
    """All evaluation prompts: the held-out split's user turns (if enabled) plus every benchmark."""
    cfg = recipe.validate_cfg.decontamination
    parts = []
    if cfg.heldout and heldout_turns is not None and heldout_turns.num_rows:
        parts.append(heldout_turns.cast(PROMPTS))
    parts += [benchmark_prompts(recipe, b) for b in cfg.benchmarks]
    return pa.concat_tables(parts) if parts else PROMPTS.empty_table()


def heldout_prompts(batches) -> pa.Table:
    """(bench='heldout', item_id=record_id, text, group=example_id or record_id) of the user
    turns of held-out RECORDS batches; a first user turn starts after its few-shot exemplars
    (meta SHOTS_CHARS), which are training examples, not the held-out item."""

    frames = []
    for batch in batches:
        df = pl.from_arrow(pa.Table.from_batches([batch]).select(["record_id", "example_id", "messages", "meta"]))
        shots = pl.col("meta").str.json_path_match(f"$.{SHOTS_CHARS}").cast(pl.Int64, strict=False).fill_null(0)
        first_user = pl.int_range(pl.len()).over("record_id") == 0  # among the user turns kept below
        frames.append(
            df.with_row_index("_row").explode("messages").drop_nulls("messages").unnest("messages")
            .filter(prompt_turn("_row"))
            .select(pl.lit(HELDOUT).alias("bench"), pl.col("record_id").alias("item_id"),
                    pl.when(first_user).then(pl.col("content").str.slice(shots)).otherwise(pl.col("content")).alias("text"),
                    pl.coalesce(pl.col("example_id").replace("", None), pl.col("record_id")).alias("group"))
        )
    if not frames:
        return PROMPTS.empty_table()
    return pl.concat(frames).to_arrow().cast(PROMPTS)
