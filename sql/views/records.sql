-- Canonical records, one row per row the convert step wrote. `record_id` is the content key
-- (exact copies share it); `row_key` is unique: the convert shard's label and the row's
-- position in that shard. (shard, row) is the pair `dedup_removed` lists, so
-- `records LEFT JOIN dedup_removed USING (shard, row)` marks what dedup removed.
-- {parts} and {files} are filled in by tasks/catalog.py.
CREATE VIEW records AS
WITH parts(filename, shard, label, first_row) AS (VALUES {parts})
SELECT parts.label || ':' || (parts.first_row + r.file_row_number) AS row_key,
       parts.shard::INTEGER AS shard, parts.first_row + r.file_row_number AS row,
       r.* EXCLUDE (filename, file_row_number)
FROM read_parquet({files}, union_by_name = true, filename = true, file_row_number = true) AS r
-- filename is as DuckDB found the file (relative, or through file_search_path): match its last three parts
JOIN parts ON parts.filename = regexp_extract(r.filename, '[^/]+/[^/]+/[^/]+$');
