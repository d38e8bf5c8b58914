DELETE FROM "bench_sql_dialects_out"."patient_embedding"
WHERE
  model_id = :model_id AND cohort_definition_id = :cohort_definition_id;
DELETE FROM "bench_sql_dialects_out"."embedding_model"
WHERE
  model_id = :model_id
