-- Rows in, out and rejected per step and source for the latest run.
SELECT step, label, rows_in, rows_out, rows_rejected, records_out, skipped, seconds
FROM runs
WHERE run_id = (SELECT run_id FROM runs ORDER BY finished_at DESC LIMIT 1)
ORDER BY finished_at, label;
