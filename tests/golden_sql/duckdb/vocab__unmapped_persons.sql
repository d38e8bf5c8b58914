SELECT
  key_id
FROM pk
WHERE
  status = 'unmapped' AND n_events >= :min_count AND n_persons < 2 * :min_count
UNION
SELECT
  key_id
FROM (
  SELECT
    key_id
  FROM pk
  WHERE
    status = 'unmapped' AND :all_top
  ORDER BY
    n_events DESC,
    domain,
    code,
    source_code
  LIMIT :top
) AS t
