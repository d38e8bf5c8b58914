-- CDM person (+ death) -> persons: subject_id, birth_date, sex, death_date, source_id (+ quarantine reason and the
-- notes on values not used). The rules live in person_status.sql, shared with the events query.
SELECT
    ps.person_id AS subject_id,
    ps.birth_date,
    ps.sex,
    ps.death_date,
    ps.source_id,
    CAST(ps.person_raw AS VARCHAR) AS row_key,
    ps.reason,
    ps.birth_note,
    ps.death_note
FROM ({person_status}) ps
