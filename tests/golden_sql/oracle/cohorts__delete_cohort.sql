DELETE FROM "bench_sql_dialects"."cohort"
WHERE
  cohort_definition_id = :cohort_definition_id
