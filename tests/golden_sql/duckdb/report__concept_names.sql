WITH wanted AS (
  SELECT
    UNNEST(CAST(:vocabs AS TEXT[])) AS vocabulary_id,
    UNNEST(CAST(:codes AS TEXT[])) AS concept_code
)
SELECT
  w.vocabulary_id || '/' || w.concept_code AS token,
  MIN(CAST(c."CONCEPT_NAME" AS TEXT)) AS name,
  MIN(CAST(c."DOMAIN_ID" AS TEXT)) AS domain
FROM wanted AS w
JOIN "main"."concept" AS c
  ON CAST(c."VOCABULARY_ID" AS TEXT) = w.vocabulary_id
  AND CAST(c."CONCEPT_CODE" AS TEXT) = w.concept_code
GROUP BY
  1
