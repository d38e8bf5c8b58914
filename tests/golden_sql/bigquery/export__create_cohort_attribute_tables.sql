CREATE TABLE IF NOT EXISTS `bench_sql_dialects_out`.`attribute_definition` (
  attribute_definition_id INT64 NOT NULL,
  attribute_name STRING(255) NOT NULL,
  attribute_description STRING,
  attribute_type_concept_id INT64 NOT NULL,
  attribute_syntax STRING
);
CREATE TABLE IF NOT EXISTS `bench_sql_dialects_out`.`cohort_attribute` (
  cohort_definition_id INT64 NOT NULL,
  subject_id INT64 NOT NULL,
  cohort_start_date DATE NOT NULL,
  attribute_definition_id INT64 NOT NULL,
  value_as_number FLOAT64 NOT NULL
)
