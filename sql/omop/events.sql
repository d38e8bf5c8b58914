-- One CDM clinical table -> canonical events (one row per source row; bad rows carry a quarantine reason).
-- Rendered by adapters/omop_queries.py once per table and dialect. {name} placeholders are validated, quoted
-- identifiers or fragments built only from them; :name are bound values. Works on DuckDB and PostgreSQL.
--
-- code        : the standard concept as VOCABULARY_ID/CONCEPT_CODE when the concept table has the row,
--               else OMOP/<concept_id> when the id is not 0, else the source code.
-- source_code : the *_source_value prefixed with the vocabulary of *_source_concept_id when that concept is
--               known, else with the standard concept's vocabulary when the value is its code, else with
--               SOURCE_<DOMAIN>.
-- visit_id    : the row's visit_occurrence_id when it joins a visit of the same person, else NULL (the
--               adapter then gives the row a visit rebuilt from (person, day): events.fill_rebuilt_visits).
-- time        : *_start_datetime when its date is the row's *_start_date, else the date at 00:00 (a sentinel
--               such as 9999-12-31 or 1700-01-01 in the datetime is not an event time); time_note says why
--               (and that a value was dropped: text that is not a number, or too large for a 32-bit float;
--               both joined by '; ').
-- dup_rank    : 1 for the row kept per record (row id, person, start date, concept, source value): the most
--               complete, then the first by all columns; > 1 for its duplicates (see duplicate_ids.sql).
-- unit        : the unit of numeric_value: the UCUM code of unit_concept_id when the concept table has it,
--               else unit_source_value, else the unit concept's name (NULL without a value).
-- outside_op  : 1 when the event lies outside every observation period of its person (kept, counted).
WITH src AS (
    SELECT
        {row_id} AS row_key,
        {person_id} AS person_id,
        {person_raw} AS person_raw,
        {start_date} AS start_date,
        {start_raw} AS start_raw,
        {start_datetime} AS start_datetime,
        {start_datetime_raw} AS start_datetime_raw,
        {end_date} AS end_date,
        {concept_id} AS concept_id,
        NULLIF(TRIM(CAST({source_value} AS VARCHAR)), '') AS source_value,
        {source_concept_id} AS source_concept_id,
        {value} AS value_read,
        {value_raw} AS value_raw,
        {visit_ref} AS visit_ref,
        {unit_concept_id} AS unit_concept_id,
        NULLIF(TRIM(CAST({unit_source_value} AS VARCHAR)), '') AS unit_source_value,
        {cast_errors} AS cast_error,
        {dup_rank} AS dup_rank
    FROM {table} e
    WHERE {where}
), src_values AS (
    -- a value a 32-bit float cannot hold (NaN, an infinity, beyond +-3.4e38: an export's sentinel or overflow) is
    -- no value: NaN compares greater than every number in DuckDB, PostgreSQL and Spark, so the test drops it too.
    -- A value held as text that is not a number (a decimal comma, '>5') is no value either. Both are noted.
    SELECT src.*, CASE WHEN ABS(value_read) <= {float32_max} THEN value_read END AS numeric_value,
        CASE
            WHEN value_read IS NOT NULL AND NOT ABS(value_read) <= {float32_max} THEN {value_dropped_note}
            WHEN value_read IS NULL AND TRIM(CAST(value_raw AS VARCHAR)) <> '' THEN {value_unparseable_note}
        END AS value_note,
        CASE
            WHEN start_datetime_raw IS NOT NULL AND start_datetime IS NULL THEN {datetime_unparseable_note}
            WHEN CAST(start_datetime AS DATE) <> start_date THEN {datetime_differs_note}
        END AS datetime_note
    FROM src
)
SELECT
    s.person_id AS subject_id,
    CASE
        WHEN CAST(s.start_datetime AS DATE) = s.start_date THEN CAST(s.start_datetime AS TIMESTAMP)
        ELSE CAST(s.start_date AS TIMESTAMP)
    END AS time,
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
    CASE
        WHEN s.numeric_value IS NULL THEN NULL
        WHEN uc.{c_vocabulary_id} = 'UCUM' THEN uc.{c_concept_code}
        ELSE COALESCE(s.unit_source_value, {unit_name})
    END AS unit,
    CAST(s.row_key AS VARCHAR) AS row_key,
    CASE
        WHEN s.person_raw IS NULL THEN 'null person_id'
        WHEN s.cast_error IS NOT NULL THEN s.cast_error
        WHEN s.person_id IS NULL THEN 'person_id is not an integer'
        WHEN s.row_key IS NOT NULL AND s.dup_rank > 1 THEN {duplicate_reason}
        WHEN ps.person_raw IS NULL THEN 'person_id not in person table'
        WHEN ps.reason IS NOT NULL THEN 'person quarantined (' || ps.reason || ')'
        WHEN s.start_raw IS NULL THEN {null_date_reason}
        WHEN s.start_date IS NULL THEN {bad_date_reason}
        WHEN s.start_date < CAST(:valid_start AS DATE) OR s.start_date > CAST(:valid_end AS DATE)
            THEN {range_date_reason}
        WHEN s.start_date < ps.birth_floor THEN {before_birth_reason}
        WHEN s.start_date > ps.death_date + CAST(:after_death_days AS INTEGER) THEN {after_death_reason}
        WHEN c.{c_concept_id} IS NULL AND (s.concept_id IS NULL OR s.concept_id = 0) AND s.source_value IS NULL
            THEN 'no concept_id and no source value'
    END AS reason,
    CASE
        WHEN s.datetime_note IS NULL THEN s.value_note
        WHEN s.value_note IS NULL THEN s.datetime_note
        ELSE s.datetime_note || '; ' || s.value_note
    END AS time_note,
    CASE
        WHEN ps.first_observed IS NULL OR s.start_date < ps.first_observed OR s.start_date > ps.last_observed
             OR g.person_id IS NOT NULL THEN 1 ELSE 0
    END AS outside_op
FROM src_values s
LEFT JOIN ({person_status}) ps ON ps.person_id = s.person_id AND ps.dup_rank = 1
LEFT JOIN ({observation_gaps}) g ON g.person_id = s.person_id AND s.start_date > g.gap_start
    AND s.start_date < g.gap_end
LEFT JOIN {concept_table} c ON c.{c_concept_id} = s.concept_id AND s.concept_id <> 0
LEFT JOIN {concept_table} sc ON sc.{c_concept_id} = s.source_concept_id AND s.source_concept_id <> 0
LEFT JOIN {concept_table} uc ON uc.{c_concept_id} = s.unit_concept_id AND s.unit_concept_id <> 0
