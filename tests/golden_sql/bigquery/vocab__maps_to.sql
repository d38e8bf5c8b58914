SELECT DISTINCT
  CAST(`CONCEPT_ID_1` AS INT64) AS concept_id_1,
  CAST(`CONCEPT_ID_2` AS INT64) AS concept_id_2
FROM `main`.`concept_relationship`
WHERE
  `RELATIONSHIP_ID` = 'Maps to'
  AND `INVALID_REASON` IS NULL
  AND `CONCEPT_ID_1` = ANY(
    :ids
  )
