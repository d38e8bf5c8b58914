-- One inclusion rule's name, in ATLAS's order (rule_sequence from 0), as OHDSI CohortGenerator records it.
INSERT INTO {schema}."cohort_inclusion" (cohort_definition_id, rule_sequence, name, description)
VALUES (:cohort_definition_id, :rule_sequence, :name, :description)
