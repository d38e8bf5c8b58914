DELETE FROM `bench_sql_dialects_out`.`cohort_attribute`
WHERE
  cohort_definition_id = :cohort_definition_id
  AND MOD(attribute_definition_id, 1000) = :analysis_id;
DELETE FROM `bench_sql_dialects_out`.`attribute_definition`
WHERE
  MOD(attribute_definition_id, 1000) = :analysis_id
