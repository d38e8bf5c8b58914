WITH hits AS (
  SELECT DISTINCT
    c.code,
    l.subject_id,
    l.label
  FROM codes AS c
  JOIN labels AS l
    ON c.subject_id = l.subject_id AND c.time < l.index_date
)
SELECT
  code,
  COUNT(DISTINCT subject_id) AS persons,
  COUNT(DISTINCT subject_id) FILTER(WHERE
    label = 1) AS with_outcome,
  COUNT(DISTINCT subject_id) FILTER(WHERE
    label = 0) AS without_outcome
FROM hits
GROUP BY
  code
HAVING
  COUNT(DISTINCT subject_id) >= :min_count
ORDER BY
  persons DESC,
  code
