SELECT DISTINCT
  CAST(`CONCEPT_ID_1` AS BIGINT) AS concept_id_1,
  CAST(`CONCEPT_ID_2` AS BIGINT) AS concept_id_2
FROM `main`.`concept_relationship`
WHERE
  `RELATIONSHIP_ID` = 'Maps to'
  AND `INVALID_REASON` IS NULL
  AND EXISTS(:ids, x -> `CONCEPT_ID_1` = x)
