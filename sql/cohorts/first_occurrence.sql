-- First occurrence, per person, of any of :concept_ids (and, when asked, their descendants through
-- concept_ancestor) in the chosen domain tables ({occurrences}: one SELECT person_id, start_date per table).
-- cohort_end_date is the end of the observation period holding the start, else the start itself: a join on the
-- person, not a correlated subquery (Spark decorrelates that into a nested loop over every period of every person).
INSERT INTO {cohort_table} (cohort_definition_id, subject_id, cohort_start_date, cohort_end_date)
SELECT :cohort_definition_id, f.person_id, f.start_date, COALESCE(MAX(CAST(op.{op_end} AS DATE)), f.start_date)
FROM (
    WITH ids AS (SELECT unnest(CAST(:concept_ids AS BIGINT[])) AS concept_id),
    wanted AS (
        SELECT concept_id FROM ids
        UNION
        SELECT CAST(ca.{ca_descendant} AS BIGINT) FROM {concept_ancestor} ca
        WHERE :descendants AND CAST(ca.{ca_ancestor} AS BIGINT) IN (SELECT concept_id FROM ids)
    ),
    occ AS ({occurrences})
    SELECT person_id, MIN(start_date) AS start_date FROM occ GROUP BY person_id
) f
LEFT JOIN {observation_period} op
       ON op.{op_person_id} = f.person_id
      AND f.start_date BETWEEN CAST(op.{op_start} AS DATE) AND CAST(op.{op_end} AS DATE)
GROUP BY f.person_id, f.start_date
