IF NOT EXISTS (SELECT * FROM INFORMATION_SCHEMA.TABLES WHERE TABLE_NAME = 'attribute_definition' AND TABLE_SCHEMA = 'bench_sql_dialects_out') EXEC('CREATE TABLE [bench_sql_dialects_out].[attribute_definition] (
  attribute_definition_id BIGINT NOT NULL,
  attribute_name VARCHAR(255) NOT NULL,
  attribute_description VARCHAR(MAX),
  attribute_type_concept_id BIGINT NOT NULL,
  attribute_syntax VARCHAR(MAX)
)');
IF NOT EXISTS (SELECT * FROM INFORMATION_SCHEMA.TABLES WHERE TABLE_NAME = 'cohort_attribute' AND TABLE_SCHEMA = 'bench_sql_dialects_out') EXEC('CREATE TABLE [bench_sql_dialects_out].[cohort_attribute] (
  cohort_definition_id BIGINT NOT NULL,
  subject_id BIGINT NOT NULL,
  cohort_start_date DATE NOT NULL,
  attribute_definition_id BIGINT NOT NULL,
  value_as_number FLOAT NOT NULL
)')
