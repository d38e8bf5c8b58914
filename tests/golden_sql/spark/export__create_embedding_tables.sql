CREATE TABLE IF NOT EXISTS `bench_sql_dialects_out`.`patient_embedding` (
  cohort_definition_id BIGINT NOT NULL,
  subject_id BIGINT NOT NULL,
  index_date DATE NOT NULL,
  model_id VARCHAR(64) NOT NULL,
  embedding ARRAY<FLOAT> NOT NULL
);
CREATE TABLE IF NOT EXISTS `bench_sql_dialects_out`.`embedding_model` (
  model_id VARCHAR(64) NOT NULL,
  name VARCHAR(255) NOT NULL,
  dims INT NOT NULL,
  created_at TIMESTAMP_NTZ NOT NULL,
  config STRING NOT NULL,
  checksum VARCHAR(64) NOT NULL
);
CREATE TABLE IF NOT EXISTS `bench_sql_dialects_out`.`embedding_run` (
  run_id VARCHAR(64) NOT NULL,
  model_id VARCHAR(64) NOT NULL,
  cohort_definition_id BIGINT NOT NULL,
  created_at TIMESTAMP_NTZ NOT NULL,
  provenance STRING NOT NULL
)
