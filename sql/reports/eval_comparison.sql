-- Base model versus every training stage: one row per suite / metric / source (source 'all'
-- = the whole suite), one column per evaluated model, named '<stage_index>:<stage>'
-- ('0:base', '1:<first stage>', ...), so columns sort in training order.
-- Forgetting: for each stage after the one that introduced a source set, the change of
-- held-out loss on that set relative to the loss right after training on it
-- (metric forgetting_loss_delta, source 'stage:<earlier stage>'; positive = forgotten).
-- A source belongs to the first stage whose mixture trains on it other than by replay
-- (mixture.replay_from is null). Reads the catalog views `eval` and `mixture`.
WITH stage_order AS (
    SELECT DISTINCT stage, stage_index FROM eval
),
owner AS (
    SELECT m.source, arg_min(o.stage, o.stage_index) AS data_stage, min(o.stage_index) AS data_index
    FROM (SELECT DISTINCT stage, source FROM mixture WHERE replay_from IS NULL) AS m
    JOIN stage_order AS o USING (stage)
    GROUP BY m.source
),
set_loss AS (
    SELECT e.stage, e.stage_index, o.data_stage, o.data_index,
           sum(e.value * e.n) / sum(e.n) AS loss
    FROM eval AS e JOIN owner AS o ON e.source = o.source
    WHERE e.suite = 'heldout' AND e.metric = 'loss' AND e.task IS NULL
    GROUP BY ALL
),
forgetting AS (
    SELECT 'heldout' AS suite, 'forgetting_loss_delta' AS metric, 'stage:' || later.data_stage AS source,
           later.stage, later.stage_index, later.loss - learned.loss AS value
    FROM set_loss AS later
    JOIN set_loss AS learned
      ON learned.data_stage = later.data_stage AND learned.stage_index = learned.data_index
    WHERE later.stage_index > later.data_index
),
cells AS (
    SELECT suite, metric, coalesce(source, 'all') AS source, stage, stage_index, value
    FROM eval WHERE task IS NULL
    UNION ALL
    SELECT suite, metric, source, stage, stage_index, value FROM forgetting
)
PIVOT (SELECT suite, metric, source, stage_index || ':' || stage AS model, value FROM cells)
ON model USING first(value)
GROUP BY suite, metric, source
ORDER BY suite, metric, source;
