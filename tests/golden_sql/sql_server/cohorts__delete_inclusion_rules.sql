DELETE FROM [schema].[cohort_inclusion]
WHERE
  cohort_definition_id = :cohort_definition_id
