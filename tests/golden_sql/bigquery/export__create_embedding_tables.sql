CREATE TABLE IF NOT EXISTS `bench_sql_dialects_out`.`patient_embedding` (
  cohort_definition_id INT64 NOT NULL,
  subject_id INT64 NOT NULL,
  index_date DATE NOT NULL,
  model_id STRING(64) NOT NULL,
  embedding ARRAY<FLOAT64> NOT NULL
);
CREATE TABLE IF NOT EXISTS `bench_sql_dialects_out`.`embedding_model` (
  model_id STRING(64) NOT NULL,
  name STRING(255) NOT NULL,
  dims INT64 NOT NULL,
  created_at DATETIME NOT NULL,
  config STRING NOT NULL,
  checksum STRING(64) NOT NULL
);
CREATE TABLE IF NOT EXISTS `bench_sql_dialects_out`.`embedding_run` (
  run_id STRING(64) NOT NULL,
  model_id STRING(64) NOT NULL,
  cohort_definition_id INT64 NOT NULL,
  created_at DATETIME NOT NULL,
  provenance STRING NOT NULL
)
