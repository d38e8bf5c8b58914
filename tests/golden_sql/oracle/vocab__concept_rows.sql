SELECT
  CAST("CONCEPT_ID" AS INT) AS concept_id,
  CAST("VOCABULARY_ID" AS VARCHAR2) AS vocabulary_id,
  CAST("CONCEPT_CODE" AS VARCHAR2) AS concept_code,
  CAST("STANDARD_CONCEPT" AS VARCHAR2) AS standard_concept
FROM "main"."concept"
WHERE
  "CONCEPT_ID" = ANY(
    :ids
  )
  OR CAST("CONCEPT_CODE" AS VARCHAR2) = ANY(
    :codes
  )
