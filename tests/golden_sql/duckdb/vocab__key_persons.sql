SELECT
  c.key_id,
  CAST(COUNT(DISTINCT e.subject_id) AS BIGINT) AS n_persons
FROM events AS e
JOIN c
  ON e.code = c.code
  AND e.domain = c.domain
  AND e.source_code IS NOT DISTINCT FROM c.source_code
  AND e.concept_id IS NOT DISTINCT FROM c.concept_id
  AND e.source_concept_id IS NOT DISTINCT FROM c.source_concept_id
GROUP BY
  c.key_id
