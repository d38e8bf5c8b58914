WITH hits AS (
  SELECT
    ix.subject_id,
    ix.index_date,
    BOOL_OR(
      CAST(o.time >= ix.index_date + TO_DAYS(CAST(:start_days AS INT))
      AND o.time < ix.index_date + TO_DAYS(CAST(:end_days AS INT) + 1) AS BOOLEAN)
    ) AS hit,
    BOOL_OR(CAST(o.time < ix.index_date AS BOOLEAN)) AS prior
  FROM ix
  JOIN o
    ON o.subject_id = ix.subject_id
  JOIN sp
    ON sp.subject_id = ix.subject_id AND o.time < sp.followup_end + INTERVAL '1' DAY
  GROUP BY
    ix.subject_id,
    ix.index_date
)
SELECT
  ix.subject_id,
  ix.index_date,
  CASE
    WHEN :new_onset AND COALESCE(h.prior, FALSE)
    THEN 'outcome before the index date'
    WHEN COALESCE(h.hit, FALSE)
    THEN NULL
    WHEN sp.followup_end IS NULL
    OR sp.followup_end < ix.index_date + TO_DAYS(CAST(:end_days AS INT))
    THEN 'not followed to the end of the window'
  END AS excluded,
  CAST(COALESCE(h.hit, FALSE) AS TINYINT) AS label
FROM ix
LEFT JOIN hits AS h
  ON h.subject_id = ix.subject_id AND h.index_date = ix.index_date
LEFT JOIN sp
  ON sp.subject_id = ix.subject_id
ORDER BY
  ix.subject_id,
  ix.index_date
