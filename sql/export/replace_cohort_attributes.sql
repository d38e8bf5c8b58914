-- A re-run replaces the cohort's attributes of this analysis id (attribute_definition_id % 1000).
DELETE FROM {cohort_attribute_table}
WHERE cohort_definition_id = :cohort_definition_id AND MOD(attribute_definition_id, 1000) = :analysis_id;
DELETE FROM {attribute_definition_table} WHERE MOD(attribute_definition_id, 1000) = :analysis_id
