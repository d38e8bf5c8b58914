-- A generated cohort's inclusion-rule results per person (mode 1: each person's best event): one row per
-- combination of rules met (a bit mask, rule 0 = bit 0) with its person count; the attrition is read from it.
SELECT CAST(inclusion_rule_mask AS BIGINT) AS mask, CAST(person_count AS BIGINT) AS persons
FROM {schema}."cohort_inclusion_result"
WHERE cohort_definition_id = :cohort_definition_id AND mode_id = 1
