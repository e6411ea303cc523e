-- Users per RFM group in the newest snapshot of the lake (and their share).
-- make analyze SQL=sql/analysis/segment_distribution.sql
WITH newest AS (SELECT max(snapshot_date) AS d FROM rfm_scores)
SELECT
    s.snapshot_date,
    s.rfm_group,
    count(*) AS users,
    round(100.0 * count(*) / sum(count(*)) OVER (), 2) AS share_pct,
    round(avg(s.recency_days), 1) AS avg_recency_days,
    round(avg(s.frequency), 1) AS avg_frequency,
    round(avg(s.monetary), 1) AS avg_monetary
FROM rfm_scores AS s, newest
WHERE s.snapshot_date = newest.d
GROUP BY s.snapshot_date, s.rfm_group
ORDER BY CASE s.rfm_group
    WHEN 'Whale' THEN 1 WHEN 'High Engaged' THEN 2 WHEN 'Medium' THEN 3 WHEN 'Low' THEN 4
    ELSE 5 END;
