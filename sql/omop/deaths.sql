-- Each person's earliest death_date in the death table (typed; rows that do not parse give NULL).
SELECT {d_person_id} AS person_id, MIN({d_death_date}) AS death_date
FROM {death_table} d
GROUP BY {d_person_id}
