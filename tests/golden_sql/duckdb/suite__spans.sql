WITH first_last AS (
  SELECT
    subject_id,
    MIN(time) AS first_event,
    MAX(time) AS last_event,
    COUNT(*) AS n_events
  FROM ev
  WHERE
    NOT time IS NULL
  GROUP BY
    subject_id
), obs AS (
  SELECT
    subject_id,
    MAX(end_date) AS obs_end
  FROM op
  GROUP BY
    subject_id
)
SELECT
  p.subject_id,
  f.first_event,
  LEAST(
    COALESCE(CAST(o.obs_end AS TIMESTAMP), f.last_event),
    COALESCE(CAST(p.death_date AS TIMESTAMP), CAST('9999-12-31' AS TIMESTAMP))
  ) AS followup_end,
  COALESCE(f.n_events, 0) AS n_events
FROM p
LEFT JOIN first_last AS f
  ON f.subject_id = p.subject_id
LEFT JOIN obs AS o
  ON o.subject_id = p.subject_id
ORDER BY
  p.subject_id
