-- Rejected rows by step, source and reason.
SELECT step, source, reason, count(*) AS n
FROM rejects
GROUP BY ALL
ORDER BY step, source, n DESC;
