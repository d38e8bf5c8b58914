WITH r AS (
  SELECT
    l.subject_id,
    l.label,
    DATE_DIFF('DAY', p.birth_date, CAST(l.index_date AS DATE)) / 365.25 AS age
  FROM labels AS l
  LEFT JOIN persons AS p
    ON p.subject_id = l.subject_id
)
SELECT
  CASE
    WHEN GROUPING(label) = 1
    THEN 'all'
    WHEN label = 1
    THEN 'with_outcome'
    ELSE 'without_outcome'
  END AS grp,
  COUNT(*) AS entries,
  COUNT(DISTINCT subject_id) AS persons,
  AVG(age) AS age_mean,
  STDDEV_SAMP(age) AS age_sd,
  QUANTILE_CONT(age, 0.25) AS age_q1,
  QUANTILE_CONT(age, 0.5) AS age_median,
  QUANTILE_CONT(age, 0.75) AS age_q3,
  COUNT(age) AS age_known
FROM r
GROUP BY
  GROUPING SETS (
    (
      label
    ),
    ()
  )
