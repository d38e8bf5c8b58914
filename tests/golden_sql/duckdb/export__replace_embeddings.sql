DELETE FROM "results"."patient_embedding"
WHERE
  model_id = :model_id AND cohort_definition_id = :cohort_definition_id;
DELETE FROM "results"."embedding_model"
WHERE
  model_id = :model_id
