-- CDM observation_period -> (subject_id, start_date, end_date) (+ quarantine reason).
SELECT
    CAST(o.{o_person_id} AS BIGINT) AS subject_id,
    CAST(o.{o_start} AS DATE) AS start_date,
    CAST(o.{o_end} AS DATE) AS end_date,
    CAST(o.{o_id} AS VARCHAR) AS row_key,
    CASE
        WHEN o.{o_person_id} IS NULL THEN 'null person_id'
        WHEN o.{o_start} IS NULL OR o.{o_end} IS NULL THEN 'null observation_period date'
        WHEN o.{o_end} < o.{o_start} THEN 'observation_period ends before it starts'
    END AS reason
FROM {op_table} o
WHERE {where}
