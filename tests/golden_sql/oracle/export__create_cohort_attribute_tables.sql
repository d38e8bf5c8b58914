CREATE TABLE IF NOT EXISTS "bench_sql_dialects_out"."attribute_definition" (
  attribute_definition_id INT NOT NULL,
  attribute_name VARCHAR2(255) NOT NULL,
  attribute_description CLOB,
  attribute_type_concept_id INT NOT NULL,
  attribute_syntax CLOB
);
CREATE TABLE IF NOT EXISTS "bench_sql_dialects_out"."cohort_attribute" (
  cohort_definition_id INT NOT NULL,
  subject_id INT NOT NULL,
  cohort_start_date DATE NOT NULL,
  attribute_definition_id INT NOT NULL,
  value_as_number DOUBLE PRECISION NOT NULL
)
