SELECT DISTINCT
  p.key_id,
  COALESCE(
    c.vocabulary_id || '/' || c.concept_code,
    CASE WHEN p.concept_id = k.concept_id THEN k.code END,
    'OMOP/' || CAST(p.concept_id AS TEXT)
  ) AS token
FROM p
JOIN k
  ON k.key_id = p.key_id
LEFT JOIN c
  ON c.concept_id = p.concept_id
