-- Table 1, per outcome group (label 1, label 0, all): entries, persons, age at index in years.
-- Inputs (DuckDB, registered Arrow): labels(subject_id, index_date, label), persons(subject_id, birth_date, sex).
WITH r AS (
    SELECT l.subject_id, l.label,
           date_diff('day', p.birth_date, CAST(l.index_date AS DATE)) / 365.25 AS age
    FROM labels l LEFT JOIN persons p ON p.subject_id = l.subject_id
)
SELECT CASE WHEN GROUPING(label) = 1 THEN 'all' WHEN label = 1 THEN 'with_outcome' ELSE 'without_outcome' END
           AS grp,
       COUNT(*) AS entries, COUNT(DISTINCT subject_id) AS persons,
       avg(age) AS age_mean, stddev_samp(age) AS age_sd, quantile_cont(age, 0.25) AS age_q1,
       quantile_cont(age, 0.5) AS age_median, quantile_cont(age, 0.75) AS age_q3, COUNT(age) AS age_known
FROM r
GROUP BY GROUPING SETS ((label), ())
