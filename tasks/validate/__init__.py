"""The `validate` step: great-expectations suites that gate training, plus decontamination.

Input: the split manifest's `records_train` (the held-out `records_eval` is never trained
on; its user turns feed decontamination). Output tables: `records_valid` (RECORDS, the
rows that passed every row-level expectation and are not contaminated, with `lang` set)
and `rejects` (reason = the failed expectation's `meta.name`, or `contaminated`).
Files kept beside the tables: `ge_validation.json` (the great-expectations results) and
`validation.md` (the report, also `stats.report_markdown`).

The suite (`expectations/records.json`, great-expectations 1.x expectation
configurations) decides which checks exist. Each expectation carries `meta.level`:

- `row`: runs on a frame with one row per record and derived check columns
  (ROW_COLUMNS). Every row is checked, vectorised in Polars, batch by batch: each
  supported expectation type has a Polars twin with great-expectations' semantics
  (nulls are never unexpected except for `*_not_be_null`). great-expectations itself
  runs the same suite on pandas frames of the first `validate.ge_sample_rows` rows
  (input order, whole batches; None = every batch), and its unexpected counts must
  equal the Polars counts on those rows, else the gate fails. Failing rows go to
  `rejects`; they fail the gate only through the per-source reject share.
- `table`: runs on the records themselves; schema (names and Arrow types, every
  Parquet part), uniqueness and nulls are computed over all rows with DuckDB and
  great-expectations checks the sample; a failure fails the gate.
- `source`: runs on one row per source (SOURCE_COLUMNS: rows in, rejected by
  row-level expectations, contaminated, valid, reject share) with great-expectations
  and its Polars twin; a failure fails the gate. The reject share counts row-level
  rejects only: contamination is reported per source but is not a quality failure.

kwargs may name recipe values as {"$PARAMETER": name} (PARAMETERS). `meta.requires`
lists values that must be set (`tokenizer` = a tokenizer is available, `languages` =
validate.languages is set); otherwise the expectation is skipped and reported so.

Token bounds need a tokenizer: `train.tokenizer`, else `train.model` when it is a named
model (tasks.model_registry) or a local directory, loaded with AutoTokenizer.from_pretrained (local files only). Without one the
token columns are null and the token expectations are skipped.

Language: py3langid on the first `validate.lang_max_chars` (160) characters of the
first user turn: py3langid walks its model byte by byte in Python (about 10 ms per
1,000 chars), and a sentence or two is enough to tell a language. A turn shorter than
`validate.lang_min_chars` gets `und` (undetermined), which is always allowed, because
language ID on a few words is noise. `lang_max_chars: 0` turns detection off (`lang`
keeps its input value; then `allowed_language` checks that value).

Template leftovers, in any turn, outside Markdown code spans and fences: a Jinja
expression `{{ ... }}` or statement `{% ... %}` (one line, at most 100 chars: a lone
`}}` closing nested braces in LaTeX or code is not a leftover), `|||` (promptsource's
input/target separator), or a `{field}` placeholder (an identifier in braces not
preceded by a word character, backslash, quote, `{`, `}`, `^`, `_` or `$`, so LaTeX like
`\\frac{a}{b}`, `x^{2}` and format strings like `"{name}"` pass). Code pasted without
fences can still trip the `{field}` rule (e.g. `print(f"Hello {name}")`).
Banned phrases (`validate.banned_phrases`, English and Chinese by default) are searched in
assistant turns, case-insensitively, with any whitespace between words and optional
whitespace next to CJK characters, as whole words at Latin edges.

An empty suite, a run where no expectation was evaluated, or an expectation that
raised counts as a gate failure. A suite file that is not JSON, or names an unknown or
unsupported expectation type, an unknown column or an unknown $PARAMETER, raises
SuiteError naming the file before any data is read (`check_validate` at recipe load).
"""
from tasks.validate.features import targets_in_choices, tool_problems
from tasks.validate.step import STEP, VERSION, gate, validate
from tasks.validate.suite import SuiteError, check_validate, load_suite

__all__ = ["STEP", "VERSION", "SuiteError", "check_validate", "gate", "load_suite", "targets_in_choices",
           "tool_problems", "validate"]
