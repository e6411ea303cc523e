-- Daily active users, events and spent tokens per UTC day, from the raw events in the lake.
SELECT
    event_date,
    count(DISTINCT user_id) AS active_users,
    count(*) AS events,
    round(sum(CASE WHEN action_type = 'SPEND_CYBER_TOKENS' THEN coalesce(spent_tokens, 0) END), 1)
        AS spent_tokens
FROM user_actions
GROUP BY event_date
ORDER BY event_date;
