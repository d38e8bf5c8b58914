WITH r AS (
  SELECT
    l.subject_id,
    l.label,
    CASE WHEN p.sex IN ('F', 'M') THEN p.sex ELSE 'U' END AS sex
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
  sex,
  COUNT(DISTINCT subject_id) AS persons
FROM r
GROUP BY
  GROUPING SETS (
    (label, sex),
    (
      sex
    )
  )
