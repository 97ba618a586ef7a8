-- One row per step task of every run: status, rows in/out/rejected, skipped (cache hit), seconds.
CREATE VIEW runs AS
SELECT * FROM read_json({files}, format = 'newline_delimited', union_by_name = true);
