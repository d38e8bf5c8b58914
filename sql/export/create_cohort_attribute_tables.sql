-- OHDSI FeatureExtraction's cohort-attribute form (read by createCohortAttrCovariateSettings):
-- one row per (cohort entry, embedding dimension); attribute_definition_id = dimension * 1000 + analysis id.
-- attribute_definition has the columns of the official CDM 5.3 table (attribute_type_concept_id 0: no concept).
CREATE TABLE IF NOT EXISTS {attribute_definition_table} (
    attribute_definition_id BIGINT NOT NULL,
    attribute_name VARCHAR(255) NOT NULL,
    attribute_description TEXT,
    attribute_type_concept_id BIGINT NOT NULL,
    attribute_syntax TEXT
);
CREATE TABLE IF NOT EXISTS {cohort_attribute_table} (
    cohort_definition_id BIGINT NOT NULL,
    subject_id BIGINT NOT NULL,
    cohort_start_date DATE NOT NULL,
    attribute_definition_id BIGINT NOT NULL,
    value_as_number FLOAT NOT NULL
)
