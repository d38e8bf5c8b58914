INSERT INTO "schema"."cohort_inclusion" (
  cohort_definition_id,
  rule_sequence,
  name,
  description
)
VALUES
  (:cohort_definition_id, :rule_sequence, :name, :description)
