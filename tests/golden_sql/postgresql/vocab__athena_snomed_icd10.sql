SELECT DISTINCT
  CAST(s."CONCEPT_CODE" AS VARCHAR) AS snomed_code,
  CAST(i."CONCEPT_CODE" AS VARCHAR) AS icd10_code
FROM "main"."concept_relationship" AS r
JOIN "main"."concept" AS i
  ON i."CONCEPT_ID" = r."CONCEPT_ID_1"
JOIN "main"."concept" AS s
  ON s."CONCEPT_ID" = r."CONCEPT_ID_2"
WHERE
  r."RELATIONSHIP_ID" = 'Maps to'
  AND i."VOCABULARY_ID" IN ('ICD10', 'ICD10CM')
  AND s."VOCABULARY_ID" = 'SNOMED'
  AND r."INVALID_REASON" IS NULL
