-- Mixture: rows and tokens per source per stage, target vs achieved share, repeats.
-- Source `replay:<stage>` is the share replayed from an earlier stage.
SELECT stage, source, unit, rows, tokens,
       round(target_share, 4) AS target_share,
       round(achieved_share, 4) AS achieved_share,
       round(repeat_factor, 3) AS repeat_factor,
       max_repeat
FROM mixture_report
ORDER BY stage_index, source;
