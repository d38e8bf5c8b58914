-- The distinct codes of the event stream (view `events`), each with a key_id and its event count.
-- Vocabularies map these keys (thousands of rows), never the events themselves; tokens.sql joins back.
-- code_vocab / code_value: the parts of 'VOCAB/code' around the first '/' (same for source_code).
-- n_persons: distinct subjects with the code, *estimated* (HyperLogLog: an exact count per code costs ten
-- times the whole query); coverage.py counts exactly the codes a report lists or that lie near min_count.
SELECT
    CAST(row_number() OVER (ORDER BY domain, code, source_code, concept_id, source_concept_id) - 1 AS BIGINT)
        AS key_id,
    domain, code, source_code, concept_id, source_concept_id,
    split_part(code, '/', 1) AS code_vocab,
    substr(code, strpos(code, '/') + 1) AS code_value,
    CASE WHEN source_code IS NOT NULL THEN split_part(source_code, '/', 1) END AS source_vocab,
    CASE WHEN source_code IS NOT NULL THEN substr(source_code, strpos(source_code, '/') + 1) END AS source_value,
    n_events, n_persons
FROM (
    SELECT domain, code, source_code, concept_id, source_concept_id, COUNT(*) AS n_events,
           CAST(approx_count_distinct(subject_id) AS BIGINT) AS n_persons
    FROM events
    GROUP BY domain, code, source_code, concept_id, source_concept_id
) g
