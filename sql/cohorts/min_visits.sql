-- Persons with at least :min_visits visits; cohort_start_date = the start of their :min_visits-th visit
-- (the first day the criterion holds), cohort_end_date = their last visit's start.
-- {visits}: one row per visit as (person_id, start_date): visit_occurrence rows, or distinct event days.
INSERT INTO {cohort_table} (cohort_definition_id, subject_id, cohort_start_date, cohort_end_date)
SELECT :cohort_definition_id, person_id,
       MAX(CASE WHEN n = :min_visits THEN start_date END), MAX(start_date)
FROM (
    SELECT person_id, start_date, ROW_NUMBER() OVER (PARTITION BY person_id ORDER BY start_date) AS n
    FROM ({visits}) v
) numbered
GROUP BY person_id
HAVING MAX(n) >= :min_visits
