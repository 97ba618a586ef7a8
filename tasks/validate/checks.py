"""Polars twins of the supported column-map expectations, with great-expectations' semantics
(nulls are never unexpected except for `*_not_be_null`): every row is checked with these."""
from __future__ import annotations

import polars as pl

from tasks.validate.suite import Expectation, resolve_parameters


def unexpected_mask(e: Expectation, frame: pl.DataFrame, params: dict) -> pl.Series:
    """True where a row is unexpected under `e` (great-expectations semantics: nulls pass)."""
    kw = resolve_parameters(e.kwargs, params)
    c = pl.col(e.column)
    t = e.type
    if t in ("expect_column_values_to_be_between", "expect_column_value_lengths_to_be_between"):
        v = c.str.len_chars() if t == "expect_column_value_lengths_to_be_between" else c
        bad = pl.lit(False)
        if kw.get("min_value") is not None:
            bad = bad | ((v <= kw["min_value"]) if kw.get("strict_min") else (v < kw["min_value"]))
        if kw.get("max_value") is not None:
            bad = bad | ((v >= kw["max_value"]) if kw.get("strict_max") else (v > kw["max_value"]))
        expr = c.is_not_null() & bad
    elif t == "expect_column_values_to_be_null":
        expr = c.is_not_null()
    elif t == "expect_column_values_to_not_be_null":
        expr = c.is_null()
    elif t == "expect_column_values_to_be_in_set":
        expr = c.is_not_null() & ~c.is_in(list(kw["value_set"]))
    elif t == "expect_column_values_to_not_be_in_set":
        expr = c.is_not_null() & c.is_in(list(kw["value_set"]))
    elif t == "expect_column_values_to_match_regex":
        expr = c.is_not_null() & ~c.cast(pl.String).str.contains(kw["regex"])
    elif t == "expect_column_values_to_not_match_regex":
        expr = c.is_not_null() & c.cast(pl.String).str.contains(kw["regex"])
    else:  # load_suite only admits the types above at row/source level
        raise AssertionError(t)
    return frame.select(expr.fill_null(False).alias("bad"))["bad"]
