SELECT
  CAST(ROW_NUMBER() OVER (ORDER BY domain, code, source_code, concept_id, source_concept_id) - 1 AS BIGINT) AS key_id,
  domain,
  code,
  source_code,
  concept_id,
  source_concept_id,
  SPLIT_PART(code, '/', 1) AS code_vocab,
  SUBSTRING(code, STRPOS(code, '/') + 1) AS code_value,
  CASE WHEN NOT source_code IS NULL THEN SPLIT_PART(source_code, '/', 1) END AS source_vocab,
  CASE
    WHEN NOT source_code IS NULL
    THEN SUBSTRING(source_code, STRPOS(source_code, '/') + 1)
  END AS source_value,
  n_events,
  n_persons
FROM (
  SELECT
    domain,
    code,
    source_code,
    concept_id,
    source_concept_id,
    COUNT(*) AS n_events,
    CAST(APPROX_COUNT_DISTINCT(subject_id) AS BIGINT) AS n_persons
  FROM events
  GROUP BY
    domain,
    code,
    source_code,
    concept_id,
    source_concept_id
) AS g
