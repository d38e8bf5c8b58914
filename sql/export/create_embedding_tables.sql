-- The embedding tables (DESIGN.md): vectors per (cohort entry, model), the model registry, run provenance.
-- {vector_type}: FLOAT[d] (DuckDB), REAL[] (PostgreSQL) or vector(d) (PostgreSQL with pgvector).
CREATE TABLE IF NOT EXISTS {embedding_table} (
    cohort_definition_id BIGINT NOT NULL,
    subject_id BIGINT NOT NULL,
    index_date DATE NOT NULL,
    model_id VARCHAR(64) NOT NULL,
    embedding {vector_type} NOT NULL
);
CREATE TABLE IF NOT EXISTS {model_table} (
    model_id VARCHAR(64) NOT NULL,
    name VARCHAR(255) NOT NULL,
    dims INTEGER NOT NULL,
    created_at TIMESTAMP NOT NULL,
    config TEXT NOT NULL,
    checksum VARCHAR(64) NOT NULL
);
CREATE TABLE IF NOT EXISTS {run_table} (
    run_id VARCHAR(64) NOT NULL,
    model_id VARCHAR(64) NOT NULL,
    cohort_definition_id BIGINT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    provenance TEXT NOT NULL
)
