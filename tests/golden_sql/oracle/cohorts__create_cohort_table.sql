CREATE TABLE IF NOT EXISTS "bench_sql_dialects"."cohort" (
  cohort_definition_id INT NOT NULL,
  subject_id INT NOT NULL,
  cohort_start_date DATE NOT NULL,
  cohort_end_date DATE NOT NULL
)
