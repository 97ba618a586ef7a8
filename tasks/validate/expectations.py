"""great-expectations 1.x, run the one way Tuneline runs it: an ephemeral context with progress
bars off and a pandas dataframe asset per level. `validate` checks its sample with it and
`mix` its mixture report."""
from __future__ import annotations

from dataclasses import dataclass, field

from tasks.validate.suite import SAMPLE_IDS, SUPPORTED, Expectation, Suite, SuiteError


def ephemeral_context():
    """A great-expectations context in memory, progress bars off (they would fill the run logs)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def validate_frame(suite, frame, name: str, result_format="COMPLETE"):
    """One great-expectations suite over one pandas frame, in a fresh context."""
    batch = (ephemeral_context().data_sources.add_pandas(name).add_dataframe_asset(name)
             .add_batch_definition_whole_dataframe("all").get_batch(batch_parameters={"dataframe": frame}))
    return batch.validate(suite, result_format=result_format)


class GE:
    """An ephemeral great-expectations context with one pandas dataframe asset per level."""

    def __init__(self, suite: Suite, params: dict, skipped: set[str]):
        import great_expectations as gx
        from great_expectations.expectations.registry import get_expectation_impl

        self.ctx = ephemeral_context()
        ds = self.ctx.data_sources.add_pandas("tuneline")
        self.params = {k: v for k, v in params.items() if v is not None}
        self.suites, self.batch_defs = {}, {}
        for level in SUPPORTED:
            s = gx.ExpectationSuite(name=f"{suite.name}.{level}")
            for e in suite.at(level):
                if e.name in skipped:
                    continue
                try:
                    s.add_expectation(get_expectation_impl(e.type)(**e.kwargs, meta={**e.meta, "name": e.name}))
                except Exception as exc:  # pydantic errors of bad kwargs
                    raise SuiteError(f"{suite.file}: expectation {e.index} ({e.name}): {exc}") from None
            self.suites[level] = s
            self.batch_defs[level] = ds.add_dataframe_asset(level).add_batch_definition_whole_dataframe("whole")

    def validate(self, level: str, frame) -> dict | None:
        """The validation result (JSON dict) of one level's suite on a pandas frame."""
        if not self.suites[level].expectations:
            return None
        batch = self.batch_defs[level].get_batch(batch_parameters={"dataframe": frame})
        fmt = {"result_format": "SUMMARY", "partial_unexpected_count": SAMPLE_IDS}
        if level == "row":
            fmt["unexpected_index_column_names"] = ["record_id"]
        return batch.validate(self.suites[level], expectation_parameters=self.params, result_format=fmt).to_json_dict()


@dataclass
class Outcome:
    """What is known about one expectation after the run."""

    e: Expectation
    skipped: str | None = None
    unexpected: int = 0  # over every row (Polars / DuckDB)
    sample_ids: list[str] = field(default_factory=list)
    ge_unexpected: int = 0  # over the great-expectations sample
    ge_sample_mask_unexpected: int = 0  # the Polars twin on the same rows
    ge_evaluated: int = 0
    ge_success: bool = True
    errors: list[str] = field(default_factory=list)
    failed_detail: str = ""

    def add_ge(self, r: dict) -> None:
        self.ge_evaluated += 1
        exc = r.get("exception_info") or {}
        if exc.get("raised_exception"):
            self.errors.append(str(exc.get("exception_message"))[:500])
        self.ge_success = self.ge_success and bool(r.get("success"))
        self.ge_unexpected += int((r.get("result") or {}).get("unexpected_count") or 0)


def ge_results(result: dict | None) -> list[tuple[str, dict]]:
    if not result:
        return []
    return [((r["expectation_config"].get("meta") or {}).get("name"), r) for r in result["results"]]
