SELECT
  CAST(`CONCEPT_ID` AS INT64) AS concept_id,
  CAST(`VOCABULARY_ID` AS STRING) AS vocabulary_id,
  CAST(`CONCEPT_CODE` AS STRING) AS concept_code,
  CAST(`STANDARD_CONCEPT` AS STRING) AS standard_concept
FROM `main`.`concept`
WHERE
  `CONCEPT_ID` = ANY(
    :ids
  ) OR CAST(`CONCEPT_CODE` AS STRING) = ANY(
    :codes
  )
