-- CDM observation_period -> (subject_id, start_date, end_date) (+ quarantine reason). Dates typed; a row that
-- does not parse, or lies outside the valid dates, is quarantined with the reason.
SELECT
    o.subject_id,
    o.start_date,
    o.end_date,
    o.row_key,
    CASE
        WHEN o.person_raw IS NULL THEN 'null person_id'
        WHEN o.cast_error IS NOT NULL THEN o.cast_error
        WHEN o.subject_id IS NULL THEN 'person_id is not an integer'
        WHEN o.start_raw IS NULL OR o.end_raw IS NULL THEN 'null observation_period date'
        WHEN o.start_date IS NULL OR o.end_date IS NULL THEN 'unparseable observation_period date'
        WHEN o.end_date < o.start_date THEN 'observation_period ends before it starts'
        WHEN o.start_date < CAST(:valid_start AS DATE) OR o.end_date > CAST(:valid_end AS DATE)
            THEN {range_reason}
    END AS reason
FROM (
    SELECT
        {o_person_id} AS subject_id,
        {o_person_raw} AS person_raw,
        {o_start} AS start_date,
        {o_start_raw} AS start_raw,
        {o_end} AS end_date,
        {o_end_raw} AS end_raw,
        CAST({o_id} AS VARCHAR) AS row_key,
        {cast_errors} AS cast_error
    FROM {op_table} o
    WHERE {where}
) o
