-- Each person's observation: first period start and last period end (typed; dates that do not parse are ignored).
SELECT {o_person_id} AS person_id, MIN({o_start}) AS first_observed, MAX({o_end}) AS last_observed
FROM {op_table} o
GROUP BY {o_person_id}
