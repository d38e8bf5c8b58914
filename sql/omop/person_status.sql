-- CDM person rows (+ death, + first/last observation) -> one row each: typed birth date, death date, the
-- duplicate rank and the quarantine reason. persons.sql selects from it; events.sql joins its rank-1 rows to
-- check each event against its person (quarantined person, before birth, long after death). Works on DuckDB
-- and PostgreSQL. {name}: validated, quoted identifiers or fragments built from them; :name: bound values.
--
-- birth_date : birth_datetime when present, else year_of_birth with month (default July) and day (default 1st):
--              the mid-year default halves the worst-case age error when only the year is known. A month or
--              day that is not one (13, 32, 31 February) falls back to the default and is noted, not fatal.
-- birth_floor: the earliest the person can have been born: the start of the birth year (or month) when the
--              month (or day) is unknown, so an event in January of a year-only birth year is not "before birth".
-- dup_rank   : 1 for the row kept per person_id (one with a year_of_birth, the most complete, then the first by
--              all columns in table order); the others are quarantined as duplicates.
SELECT
    b.person_id,
    b.person_raw,
    b.birth_date,
    b.birth_floor,
    b.sex,
    b.source_id,
    b.dup_rank,
    b.first_observed,
    b.last_observed,
    CASE
        WHEN b.death_date >= CAST(:valid_start AS DATE) AND b.death_date <= CAST(:valid_end AS DATE)
             AND (b.birth_floor IS NULL OR b.death_date >= b.birth_floor) THEN b.death_date
    END AS death_date,
    CASE
        WHEN b.person_raw IS NULL THEN 'null person_id'
        WHEN b.cast_error IS NOT NULL THEN b.cast_error
        WHEN b.person_id IS NULL THEN 'person_id is not an integer'
        WHEN b.dup_rank > 1 THEN 'duplicate person_id'
        WHEN b.yob_raw IS NULL THEN 'null year_of_birth'
        WHEN b.birth_date IS NULL THEN 'year_of_birth is not a year'
        WHEN b.birth_date < CAST(:valid_start AS DATE) OR b.birth_date > CAST(:valid_end AS DATE)
            THEN {birth_range_reason}
        WHEN b.birth_floor > b.last_observed THEN 'birth after the end of the last observation_period'
    END AS reason,
    CASE
        WHEN b.birth_dt IS NOT NULL OR b.birth_date IS NULL THEN NULL
        WHEN b.mob IS NOT NULL AND b.mob <> 0 AND NOT b.month_ok
            THEN 'month_of_birth not 1-12: July 1st of year_of_birth used'
        WHEN b.month_ok AND b.dob IS NOT NULL AND b.dob <> 0 AND NOT b.day_ok
            THEN 'day_of_birth not a day of month_of_birth: 1st of the month used'
    END AS birth_note,
    CASE
        WHEN b.death_date IS NULL OR b.birth_date IS NULL THEN NULL
        WHEN b.death_date < CAST(:valid_start AS DATE) OR b.death_date > CAST(:valid_end AS DATE)
            THEN 'death_date outside the valid dates: not used'
        WHEN b.death_date < b.birth_floor THEN 'death_date before birth: not used'
    END AS death_note
FROM (
    SELECT
        m.*,
        CASE
            WHEN m.birth_dt IS NOT NULL THEN m.birth_dt
            WHEN m.year_ok THEN make_date(m.yob, CASE WHEN m.month_ok THEN m.mob ELSE 7 END,
                                          CASE WHEN m.day_ok THEN m.dob ELSE 1 END)
        END AS birth_date,
        CASE
            WHEN m.birth_dt IS NOT NULL THEN m.birth_dt
            WHEN m.year_ok THEN make_date(m.yob, CASE WHEN m.month_ok THEN m.mob ELSE 1 END,
                                          CASE WHEN m.day_ok THEN m.dob ELSE 1 END)
        END AS birth_floor
    FROM (
        SELECT
            r.*,
            COALESCE(r.yob BETWEEN 1 AND 9999, FALSE) AS year_ok,
            COALESCE(r.yob BETWEEN 1 AND 9999 AND r.mob BETWEEN 1 AND 12, FALSE) AS month_ok,
            CASE
                WHEN NOT COALESCE(r.yob BETWEEN 1 AND 9999 AND r.mob BETWEEN 1 AND 12, FALSE) THEN FALSE
                WHEN r.dob BETWEEN 1 AND 28 THEN TRUE
                WHEN r.dob BETWEEN 29 AND 31 THEN r.dob <= EXTRACT(DAY FROM
                    make_date(r.yob, r.mob, 1) + INTERVAL '1 month' - INTERVAL '1 day')
                ELSE FALSE
            END AS day_ok
        FROM (
            SELECT
                {person_id} AS person_id,
                {person_raw} AS person_raw,
                {year_of_birth} AS yob,
                {year_raw} AS yob_raw,
                {month_of_birth} AS mob,
                {day_of_birth} AS dob,
                {birth_datetime} AS birth_dt,
                CASE
                    WHEN {gender_concept_id} = 8532 THEN 'F'
                    WHEN {gender_concept_id} = 8507 THEN 'M'
                    WHEN UPPER(CAST({gender_source_value} AS VARCHAR)) IN ('F', 'FEMALE') THEN 'F'
                    WHEN UPPER(CAST({gender_source_value} AS VARCHAR)) IN ('M', 'MALE') THEN 'M'
                    ELSE 'U'
                END AS sex,
                CAST({person_source_value} AS VARCHAR) AS source_id,
                {cast_errors} AS cast_error,
                row_number() OVER (PARTITION BY {person_id}
                                   ORDER BY CASE WHEN {year_of_birth} IS NULL THEN 1 ELSE 0 END, {all_columns})
                    AS dup_rank,
                dth.death_date,
                obs.first_observed,
                obs.last_observed
            FROM {person_table} p
            LEFT JOIN ({deaths}) dth ON dth.person_id = {person_id}
            LEFT JOIN ({observed}) obs ON obs.person_id = {person_id}
            WHERE {where}
        ) r
    ) m
) b
