-- Building a cohort again replaces its rows (same transaction as the insert).
DELETE FROM {cohort_table} WHERE cohort_definition_id = :cohort_definition_id
