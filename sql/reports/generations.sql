-- A handful of generations: the same held-out prompts answered by the base model and every stage
-- (the first four prompts by record id; the full texts are in the `generations` view).
WITH picked AS (
    SELECT DISTINCT record_id FROM generations ORDER BY record_id LIMIT 4
), stages AS (
    SELECT DISTINCT stage, stage_index FROM eval
)
SELECT left(replace(g.prompt, chr(10), ' '), 60) AS prompt,
       g.stage,
       left(replace(g.generation, chr(10), ' '), 70) AS generation,
       left(replace(g.reference, chr(10), ' '), 40) AS reference
FROM generations g
JOIN picked USING (record_id)
LEFT JOIN stages s USING (stage)
ORDER BY g.record_id, s.stage_index
