SELECT
  COUNT(*) AS entries_with_later_events,
  COUNT(*) FILTER(WHERE
    in_window) AS entries_with_window_events,
  (
    SELECT
      COUNT(*)
    FROM ix
  ) AS entries
FROM (
  SELECT
    ix.subject_id,
    ix.index_date,
    BOOL_OR(
      CAST(ev.time >= ix.index_date + TO_DAYS(CAST(:tar_start AS INT))
      AND ev.time < ix.index_date + TO_DAYS(CAST(:tar_end AS INT) + 1) AS BOOLEAN)
    ) AS in_window
  FROM ix
  JOIN ev
    ON ev.subject_id = ix.subject_id AND ev.time >= ix.index_date
  GROUP BY
    ix.subject_id,
    ix.index_date
) AS later
