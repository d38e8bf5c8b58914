SELECT
  CAST(`ANCESTOR_CONCEPT_ID` AS INT64) AS ancestor_concept_id,
  CAST(`DESCENDANT_CONCEPT_ID` AS INT64) AS descendant_concept_id,
  CAST(`MIN_LEVELS_OF_SEPARATION` AS INT64) AS min_levels_of_separation
FROM `main`.`concept_ancestor`
WHERE
  `DESCENDANT_CONCEPT_ID` = ANY(
    :ids
  )
