-- What this catalog is: Tuneline's catalog format, the DuckDB storage version it is written
-- in, and how to open it. {format}, {storage} and {how} are filled in by tasks/catalog.py.
CREATE VIEW tuneline_catalog AS
SELECT {format} AS format, {storage} AS storage_version, {how} AS how_to_open;
