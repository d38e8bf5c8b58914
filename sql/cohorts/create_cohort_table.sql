-- An OHDSI cohort table (the results schema's usual shape), created only if absent.
CREATE TABLE IF NOT EXISTS {cohort_table} (
    cohort_definition_id BIGINT NOT NULL,
    subject_id BIGINT NOT NULL,
    cohort_start_date DATE NOT NULL,
    cohort_end_date DATE NOT NULL
)
