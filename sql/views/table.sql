-- One view per artifact table: every Parquet part that the latest published manifests list.
-- {name} and {files} (paths relative to the artifacts directory) are filled in by tasks/catalog.py.
CREATE VIEW {name} AS SELECT * FROM read_parquet({files}, union_by_name = true);
