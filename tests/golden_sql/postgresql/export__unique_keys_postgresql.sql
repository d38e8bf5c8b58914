CREATE UNIQUE INDEX IF NOT EXISTS "patient_embedding_key" ON "bench_sql_dialects_out"."patient_embedding"(model_id, cohort_definition_id, subject_id, index_date);
CREATE UNIQUE INDEX IF NOT EXISTS "embedding_model_key" ON "bench_sql_dialects_out"."embedding_model"(model_id)
