IF NOT EXISTS (SELECT * FROM INFORMATION_SCHEMA.TABLES WHERE TABLE_NAME = 'cohort' AND TABLE_SCHEMA = 'bench_sql_dialects') EXEC('CREATE TABLE [bench_sql_dialects].[cohort] (
  cohort_definition_id BIGINT NOT NULL,
  subject_id BIGINT NOT NULL,
  cohort_start_date DATE NOT NULL,
  cohort_end_date DATE NOT NULL
)')
