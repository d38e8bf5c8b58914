SELECT
  CAST("CONCEPT_ID" AS BIGINT) AS concept_id,
  CAST("VOCABULARY_ID" AS VARCHAR) AS vocabulary_id,
  CAST("CONCEPT_CODE" AS VARCHAR) AS concept_code,
  CAST("STANDARD_CONCEPT" AS VARCHAR) AS standard_concept
FROM "main"."concept"
WHERE
  "CONCEPT_ID" = ANY(
    :ids
  ) OR CAST("CONCEPT_CODE" AS VARCHAR) = ANY(
    :codes
  )
