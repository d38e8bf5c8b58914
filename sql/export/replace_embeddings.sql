-- A re-run replaces a (model, cohort)'s vectors and registry row; runs in the insert's transaction.
DELETE FROM {embedding_table} WHERE model_id = :model_id AND cohort_definition_id = :cohort_definition_id;
DELETE FROM {model_table} WHERE model_id = :model_id
