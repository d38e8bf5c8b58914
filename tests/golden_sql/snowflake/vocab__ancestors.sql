SELECT
  CAST("ANCESTOR_CONCEPT_ID" AS BIGINT) AS ancestor_concept_id,
  CAST("DESCENDANT_CONCEPT_ID" AS BIGINT) AS descendant_concept_id,
  CAST("MIN_LEVELS_OF_SEPARATION" AS BIGINT) AS min_levels_of_separation
FROM "main"."concept_ancestor"
WHERE
  "DESCENDANT_CONCEPT_ID" = ANY(
    :ids
  )
