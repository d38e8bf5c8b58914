SELECT
  CAST(`CONCEPT_ID` AS BIGINT) AS concept_id,
  CAST(`VOCABULARY_ID` AS STRING) AS vocabulary_id,
  CAST(`CONCEPT_CODE` AS STRING) AS concept_code,
  CAST(`STANDARD_CONCEPT` AS STRING) AS standard_concept
FROM `main`.`concept`
WHERE
  EXISTS(:ids, x -> `CONCEPT_ID` = x)
  OR EXISTS(:codes, x -> CAST(`CONCEPT_CODE` AS STRING) = x)
