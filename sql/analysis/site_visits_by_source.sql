-- Corporate-site visits per source: visits, distinct users, first and last day seen.
SELECT
    source,
    count(*) AS visits,
    count(DISTINCT user_id) AS users,
    min(visit_date) AS first_day,
    max(visit_date) AS last_day
FROM site_visits
GROUP BY source
ORDER BY visits DESC, source;
