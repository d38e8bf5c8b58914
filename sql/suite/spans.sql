-- Each person's span for drawing index dates: first event, end of follow-up (the last observation period's end,
-- else the last event; a death ends it), and the number of events. ev: subject_id, time; op: observation
-- periods; p: persons. Counts only leave this query as one row per person, inside the caller's process.
WITH first_last AS (
    SELECT subject_id, min(time) AS first_event, max(time) AS last_event, count(*) AS n_events
    FROM ev WHERE time IS NOT NULL GROUP BY subject_id
), obs AS (
    SELECT subject_id, max(end_date) AS obs_end FROM op GROUP BY subject_id
)
SELECT p.subject_id,
       f.first_event,
       least(coalesce(CAST(o.obs_end AS TIMESTAMP), f.last_event),
             coalesce(CAST(p.death_date AS TIMESTAMP), CAST('9999-12-31' AS TIMESTAMP))) AS followup_end,
       coalesce(f.n_events, 0) AS n_events
FROM p
LEFT JOIN first_last AS f ON f.subject_id = p.subject_id
LEFT JOIN obs AS o ON o.subject_id = p.subject_id
ORDER BY p.subject_id
