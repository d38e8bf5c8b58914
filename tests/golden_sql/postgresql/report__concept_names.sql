WITH wanted AS (
  SELECT
    UNNEST(CAST(:vocabs AS VARCHAR[])) AS vocabulary_id,
    UNNEST(CAST(:codes AS VARCHAR[])) AS concept_code
)
SELECT
  w.vocabulary_id || '/' || w.concept_code AS token,
  MIN(CAST(c."CONCEPT_NAME" AS VARCHAR)) AS name,
  MIN(CAST(c."DOMAIN_ID" AS VARCHAR)) AS domain
FROM wanted AS w
JOIN "main"."concept" AS c
  ON CAST(c."VOCABULARY_ID" AS VARCHAR) = w.vocabulary_id
  AND CAST(c."CONCEPT_CODE" AS VARCHAR) = w.concept_code
GROUP BY
  1
