-- One row per (model, cohort entry) and one registry row per model, whatever a writer does (PostgreSQL).
-- Runs after replace_embeddings.sql in the same transaction, so a table from an earlier version that holds
-- duplicates of the (model, cohort) being written is cleaned before the key is built.
CREATE UNIQUE INDEX IF NOT EXISTS {embedding_key}
    ON {embedding_table} (model_id, cohort_definition_id, subject_id, index_date);
CREATE UNIQUE INDEX IF NOT EXISTS {model_key} ON {model_table} (model_id)
