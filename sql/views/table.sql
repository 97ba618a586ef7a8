-- One view per artifact table: every Parquet part that the latest published manifests list.
-- {name} and {files} are filled in by tasks/catalog.py.
CREATE VIEW {name} AS SELECT * FROM read_parquet({files}, union_by_name = true);
