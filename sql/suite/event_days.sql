-- Candidate index dates at events: the end of each day (the next day's 00:00, so that day's events are inputs)
-- on which the person has an event in $domains (any when empty) with a code in $codes (any when empty), with at
-- least $min_history_days of history before it and $min_followup_days of follow-up after it. ev: events;
-- sp: spans.sql's rows. One row per (subject, day).
SELECT DISTINCT ev.subject_id, CAST(date_trunc('day', ev.time) AS TIMESTAMP) + INTERVAL 1 DAY AS index_date
FROM ev
JOIN sp ON sp.subject_id = ev.subject_id
WHERE ev.time IS NOT NULL
  AND (len(CAST($domains AS VARCHAR[])) = 0 OR ev.domain IN (SELECT unnest(CAST($domains AS VARCHAR[]))))
  AND (len(CAST($codes AS VARCHAR[])) = 0 OR ev.code IN (SELECT unnest(CAST($codes AS VARCHAR[]))))
  AND ev.time >= sp.first_event + to_days(CAST($min_history_days AS INTEGER))
  AND ev.time + to_days(CAST($min_followup_days AS INTEGER) + 1) <= sp.followup_end
ORDER BY 1, 2
