-- PLP-style binary labels for target cohort entries (:t_subject, :t_date, bound arrays), computed in the CDM.
-- {outcomes}: one SELECT person_id, start_date per outcome source (concept occurrences or an outcome cohort);
-- {observation_period}: the CDM's observation periods (PLP reads prior / post observation from them).
-- Outcomes in [index + :tar_start, index + :tar_end] days give label 1; an outcome before index + :tar_start
-- (within :lookback days) excludes the entry when :remove_prior; entries outside every observation period,
-- with fewer than :min_prior days of observation before the index or fewer than :min_tar days at risk
-- (unless they have the outcome and :include_all_outcomes) are excluded with their reason.
WITH target AS (
    SELECT unnest(CAST(:t_subject AS BIGINT[])) AS subject_id, unnest(CAST(:t_date AS DATE[])) AS index_date
),
occ AS ({outcomes}),
op AS (
    SELECT CAST(o.{op_person_id} AS BIGINT) AS person_id, CAST(o.{op_start} AS DATE) AS op_start,
           CAST(o.{op_end} AS DATE) AS op_end
    FROM {observation_period} o
    WHERE CAST(o.{op_person_id} AS BIGINT) IN (SELECT subject_id FROM target)
),
scored AS (
    SELECT t.subject_id, t.index_date,
           (SELECT MAX(op.op_start) FROM op WHERE op.person_id = t.subject_id
              AND t.index_date BETWEEN op.op_start AND op.op_end) AS op_start,
           (SELECT MAX(op.op_end) FROM op WHERE op.person_id = t.subject_id
              AND t.index_date BETWEEN op.op_start AND op.op_end) AS op_end,
           EXISTS (SELECT 1 FROM occ WHERE occ.person_id = t.subject_id
                     AND occ.start_date < t.index_date + CAST(:tar_start AS INTEGER)
                     AND occ.start_date >= t.index_date - CAST(:lookback AS INTEGER)) AS prior_outcome,
           (SELECT MIN(occ.start_date) FROM occ WHERE occ.person_id = t.subject_id
              AND occ.start_date >= t.index_date + CAST(:tar_start AS INTEGER)
              AND occ.start_date <= t.index_date + CAST(:tar_end AS INTEGER)) AS outcome_date
    FROM target t
)
SELECT subject_id, CAST(index_date AS TIMESTAMP) AS index_date,
       CAST(CASE WHEN outcome_date IS NOT NULL AND outcome_date <= COALESCE(op_end, outcome_date)
                 THEN 1 ELSE 0 END AS SMALLINT) AS label,
       CAST(outcome_date AS TIMESTAMP) AS outcome_date,
       CASE WHEN op_start IS NULL THEN 'index date outside every observation period'
            WHEN :remove_prior AND prior_outcome THEN 'outcome before the time at risk'
            WHEN index_date - op_start < :min_prior THEN 'too little observation before index'
            WHEN LEAST(op_end, index_date + CAST(:tar_end AS INTEGER))
                 - (index_date + CAST(:tar_start AS INTEGER)) + 1 < :min_tar
                 AND NOT (:include_all_outcomes AND outcome_date IS NOT NULL AND outcome_date <= op_end)
                 THEN 'too little time at risk'
       END AS excluded
FROM scored
ORDER BY subject_id, index_date
