CREATE TABLE IF NOT EXISTS `bench_sql_dialects_out`.`attribute_definition` (
  attribute_definition_id BIGINT NOT NULL,
  attribute_name VARCHAR(255) NOT NULL,
  attribute_description STRING,
  attribute_type_concept_id BIGINT NOT NULL,
  attribute_syntax STRING
);
CREATE TABLE IF NOT EXISTS `bench_sql_dialects_out`.`cohort_attribute` (
  cohort_definition_id BIGINT NOT NULL,
  subject_id BIGINT NOT NULL,
  cohort_start_date DATE NOT NULL,
  attribute_definition_id BIGINT NOT NULL,
  value_as_number DOUBLE NOT NULL
)
