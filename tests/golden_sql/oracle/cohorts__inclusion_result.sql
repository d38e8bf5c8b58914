SELECT
  CAST(inclusion_rule_mask AS INT) AS mask,
  CAST(person_count AS INT) AS persons
FROM "schema"."cohort_inclusion_result"
WHERE
  cohort_definition_id = :cohort_definition_id AND mode_id = 1
