CREATE TABLE IF NOT EXISTS "results"."attribute_definition" (
  attribute_definition_id BIGINT NOT NULL,
  attribute_name TEXT NOT NULL,
  attribute_description TEXT,
  attribute_type_concept_id BIGINT NOT NULL,
  attribute_syntax TEXT
);
CREATE TABLE IF NOT EXISTS "results"."cohort_attribute" (
  cohort_definition_id BIGINT NOT NULL,
  subject_id BIGINT NOT NULL,
  cohort_start_date DATE NOT NULL,
  attribute_definition_id BIGINT NOT NULL,
  value_as_number REAL NOT NULL
)
