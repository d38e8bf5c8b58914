SELECT DISTINCT
  ev.subject_id,
  CAST(DATE_TRUNC('DAY', ev.time) AS TIMESTAMP) + INTERVAL '1' DAY AS index_date
FROM ev
JOIN sp
  ON sp.subject_id = ev.subject_id
WHERE
  NOT ev.time IS NULL
  AND (
    LENGTH(CAST(:domains AS TEXT[])) = 0
    OR ev.domain IN (
      SELECT
        UNNEST(CAST(:domains AS TEXT[]))
    )
  )
  AND (
    LENGTH(CAST(:codes AS TEXT[])) = 0
    OR ev.code IN (
      SELECT
        UNNEST(CAST(:codes AS TEXT[]))
    )
  )
  AND ev.time >= sp.first_event + TO_DAYS(CAST(:min_history_days AS INT))
  AND ev.time + TO_DAYS(CAST(:min_followup_days AS INT) + 1) <= sp.followup_end
ORDER BY
  1,
  2
