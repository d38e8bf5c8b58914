CREATE TABLE IF NOT EXISTS "results"."patient_embedding" (
  cohort_definition_id BIGINT NOT NULL,
  subject_id BIGINT NOT NULL,
  index_date DATE NOT NULL,
  model_id TEXT NOT NULL,
  embedding REAL[8] NOT NULL
);
CREATE TABLE IF NOT EXISTS "results"."embedding_model" (
  model_id TEXT NOT NULL,
  name TEXT NOT NULL,
  dims INT NOT NULL,
  created_at TIMESTAMP NOT NULL,
  config TEXT NOT NULL,
  checksum TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS "results"."embedding_run" (
  run_id TEXT NOT NULL,
  model_id TEXT NOT NULL,
  cohort_definition_id BIGINT NOT NULL,
  created_at TIMESTAMP NOT NULL,
  provenance TEXT NOT NULL
)
