-- Each person's last observation_period end (typed; rows that do not parse give NULL).
SELECT {o_person_id} AS person_id, MAX({o_end}) AS last_observed
FROM {op_table} o
GROUP BY {o_person_id}
