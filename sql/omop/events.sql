-- One CDM clinical table -> canonical events (one row per source row; bad rows carry a quarantine reason).
-- Rendered by adapters/omop.py once per table and dialect. {name} placeholders are validated, quoted
-- identifiers or fragments built only from them; :name are bound values. Works on DuckDB and PostgreSQL.
--
-- code        : the standard concept as VOCABULARY_ID/CONCEPT_CODE when the concept table has the row,
--               else OMOP/<concept_id> when the id is not 0, else the source code.
-- source_code : the *_source_value prefixed with the vocabulary of *_source_concept_id when that concept is
--               known, else with the standard concept's vocabulary when the value is its code, else with
--               SOURCE_<DOMAIN>.
-- visit_id    : the row's visit_occurrence_id when it joins a visit of the same person, else NULL (the
--               adapter then gives the row a visit rebuilt from (person, day): events.fill_rebuilt_visits).
WITH src AS (
    SELECT
        {row_id} AS row_key,
        CAST(e.{person_id} AS BIGINT) AS person_id,
        {start_date} AS start_date,
        {start_raw} AS start_raw,
        {start_datetime} AS start_datetime,
        {end_date} AS end_date,
        CAST({concept_id} AS BIGINT) AS concept_id,
        NULLIF(TRIM(CAST({source_value} AS VARCHAR)), '') AS source_value,
        CAST({source_concept_id} AS BIGINT) AS source_concept_id,
        {value} AS numeric_value,
        CAST({visit_ref} AS BIGINT) AS visit_ref
    FROM {table} e
    WHERE {where}
)
SELECT
    s.person_id AS subject_id,
    CAST(COALESCE(s.start_datetime, s.start_date) AS TIMESTAMP) AS time,
    CASE
        WHEN c.{c_concept_id} IS NOT NULL THEN c.{c_vocabulary_id} || '/' || c.{c_concept_code}
        WHEN s.concept_id IS NOT NULL AND s.concept_id <> 0 THEN 'OMOP/' || CAST(s.concept_id AS VARCHAR)
        WHEN s.source_value IS NOT NULL THEN
            COALESCE(sc.{c_vocabulary_id}, {domain_source_prefix}) || '/' || s.source_value
    END AS code,
    s.numeric_value,
    CASE
        WHEN s.visit_ref IS NOT NULL AND EXISTS (
            SELECT 1 FROM {visit_table} v
            WHERE v.{v_visit_occurrence_id} = s.visit_ref AND v.{v_person_id} = s.person_id
        ) THEN s.visit_ref
    END AS visit_id,
    {domain} AS domain,
    CASE WHEN s.concept_id <> 0 THEN s.concept_id END AS concept_id,
    CAST(s.end_date AS TIMESTAMP) AS end_time,
    CASE
        WHEN s.source_value IS NULL THEN NULL
        WHEN sc.{c_concept_id} IS NOT NULL THEN sc.{c_vocabulary_id} || '/' || s.source_value
        WHEN c.{c_concept_code} = s.source_value THEN c.{c_vocabulary_id} || '/' || s.source_value
        ELSE {domain_source_prefix} || '/' || s.source_value
    END AS source_code,
    CASE WHEN s.source_concept_id <> 0 THEN s.source_concept_id END AS source_concept_id,
    CAST(s.row_key AS VARCHAR) AS row_key,
    CASE
        WHEN s.person_id IS NULL THEN 'null person_id'
        WHEN NOT EXISTS (
            SELECT 1 FROM {person_table} p WHERE p.{p_person_id} = s.person_id AND p.{p_year_of_birth} IS NOT NULL
        ) THEN 'person_id not in person table (or person has no year_of_birth)'
        WHEN s.start_raw IS NULL THEN {null_date_reason}
        WHEN s.start_date IS NULL THEN {bad_date_reason}
        WHEN s.start_date < DATE '1800-01-01' OR s.start_date >= DATE '2150-01-01'
            THEN {range_date_reason}
        WHEN c.{c_concept_id} IS NULL AND (s.concept_id IS NULL OR s.concept_id = 0) AND s.source_value IS NULL
            THEN 'no concept_id and no source value'
    END AS reason
FROM src s
LEFT JOIN {concept_table} c ON c.{c_concept_id} = s.concept_id AND s.concept_id <> 0
LEFT JOIN {concept_table} sc ON sc.{c_concept_id} = s.source_concept_id AND s.source_concept_id <> 0
