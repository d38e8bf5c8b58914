-- CDM person (+ death) -> persons: subject_id, birth_date, sex, death_date, source_id (+ quarantine reason).
-- Birth date: birth_datetime when present, else year_of_birth with month (default July) and day (default 1st):
-- the mid-year default halves the worst-case age error when only the year is known.
SELECT
    CAST(p.{p_person_id} AS BIGINT) AS subject_id,
    CASE WHEN p.{p_year_of_birth} IS NOT NULL THEN COALESCE(
        CAST({birth_datetime} AS DATE),
        make_date(CAST(p.{p_year_of_birth} AS INTEGER),
                  CAST(COALESCE(NULLIF({month_of_birth}, 0), 7) AS INTEGER),
                  CAST(COALESCE(NULLIF({day_of_birth}, 0), 1) AS INTEGER)))
    END AS birth_date,
    CASE
        WHEN p.{p_gender_concept_id} = 8532 THEN 'F'
        WHEN p.{p_gender_concept_id} = 8507 THEN 'M'
        WHEN UPPER(CAST({gender_source_value} AS VARCHAR)) IN ('F', 'FEMALE') THEN 'F'
        WHEN UPPER(CAST({gender_source_value} AS VARCHAR)) IN ('M', 'MALE') THEN 'M'
        ELSE 'U'
    END AS sex,
    {death_date} AS death_date,
    CAST({person_source_value} AS VARCHAR) AS source_id,
    CASE
        WHEN p.{p_person_id} IS NULL THEN 'null person_id'
        WHEN p.{p_year_of_birth} IS NULL THEN 'null year_of_birth'
    END AS reason
FROM {person_table} p
WHERE {where}
