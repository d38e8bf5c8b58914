WITH mapped AS (
  SELECT
    k.key_id,
    k.domain,
    k.code,
    k.source_code,
    k.concept_id,
    k.source_concept_id,
    m.token,
    DENSE_RANK() OVER (ORDER BY m.token) AS tok_rank
  FROM keys AS k
  JOIN mapping AS m
    ON m.key_id = k.key_id
  WHERE
    NOT m.token IS NULL
)
SELECT
  e.subject_id,
  CAST(e.time AS TIMESTAMP) AS time,
  COALESCE(e.visit_id, 0) AS visit_id,
  e.domain,
  e.code,
  m.token,
  m.key_id,
  m.tok_rank
FROM events AS e
JOIN mapped AS m
  ON e.code = m.code
  AND e.domain = m.domain
  AND e.source_code IS NOT DISTINCT FROM m.source_code
  AND e.concept_id IS NOT DISTINCT FROM m.concept_id
  AND e.source_concept_id IS NOT DISTINCT FROM m.source_concept_id
