WITH wanted AS (
  SELECT
    INLINE(ARRAYS_ZIP(CAST(:vocabs AS ARRAY<STRING>), CAST(:codes AS ARRAY<STRING>))) AS (vocabulary_id, concept_code)
)
SELECT
  w.vocabulary_id || '/' || w.concept_code AS token,
  MIN(CAST(c.`CONCEPT_NAME` AS STRING)) AS name,
  MIN(CAST(c.`DOMAIN_ID` AS STRING)) AS domain
FROM wanted AS w
JOIN `main`.`concept` AS c
  ON CAST(c.`VOCABULARY_ID` AS STRING) = w.vocabulary_id
  AND CAST(c.`CONCEPT_CODE` AS STRING) = w.concept_code
GROUP BY
  1
