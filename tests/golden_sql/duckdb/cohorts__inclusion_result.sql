SELECT
  CAST(inclusion_rule_mask AS BIGINT) AS mask,
  CAST(person_count AS BIGINT) AS persons
FROM "schema"."cohort_inclusion_result"
WHERE
  cohort_definition_id = :cohort_definition_id AND mode_id = 1
