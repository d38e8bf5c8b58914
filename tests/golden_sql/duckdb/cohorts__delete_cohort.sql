DELETE FROM "results"."cohort"
WHERE
  cohort_definition_id = :cohort_definition_id
