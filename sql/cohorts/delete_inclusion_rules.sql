-- A cohort's inclusion-rule names are replaced when it is generated again (same transaction as the cohort).
DELETE FROM {schema}."cohort_inclusion" WHERE cohort_definition_id = :cohort_definition_id
