-- Evaluation results. An evaluate artifact is keyed by its content (weights, data, config),
-- never by a run, so the Parquet carries no run id: `run_id` is the latest run that
-- published the artifact, from `runs`. {files} is filled in by tasks/catalog.py.
CREATE VIEW eval AS
WITH e AS (
    SELECT * EXCLUDE (run_id), regexp_extract(filename, '(evaluate/[^/]+)/[^/]+$', 1) AS _dir
    FROM read_parquet({files}, union_by_name = true, filename = true)
), published AS (
    SELECT dir AS _dir, arg_max(run_id, finished_at) AS run_id FROM runs WHERE step = 'evaluate' GROUP BY dir
)
SELECT published.run_id, e.* EXCLUDE (_dir, filename) FROM e LEFT JOIN published USING (_dir);
