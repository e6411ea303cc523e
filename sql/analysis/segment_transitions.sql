-- Users moving between RFM groups: the newest snapshot against the one 7 days earlier
-- (or the oldest snapshot in the lake when the lake holds less than a week).
-- A user absent from the earlier snapshot (no event before it) shows as '(new)'.
WITH bounds AS (
    SELECT max(snapshot_date) AS newest,
           greatest(min(snapshot_date), max(snapshot_date) - INTERVAL 7 DAY)::DATE AS earlier
    FROM rfm_scores
),
before AS (
    SELECT user_id, rfm_group FROM rfm_scores, bounds WHERE snapshot_date = bounds.earlier
),
after AS (
    SELECT user_id, rfm_group FROM rfm_scores, bounds WHERE snapshot_date = bounds.newest
)
SELECT
    (SELECT earlier FROM bounds) AS from_snapshot,
    (SELECT newest FROM bounds) AS to_snapshot,
    coalesce(b.rfm_group, '(new)') AS from_group,
    a.rfm_group AS to_group,
    count(*) AS users
FROM after AS a
LEFT JOIN before AS b USING (user_id)
GROUP BY ALL
ORDER BY from_group, to_group;
