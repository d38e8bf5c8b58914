CREATE TABLE IF NOT EXISTS "schema"."cohort_inclusion" (
  cohort_definition_id INT NOT NULL,
  rule_sequence INT NOT NULL,
  name VARCHAR2(255),
  description VARCHAR2(1000)
);
CREATE TABLE IF NOT EXISTS "schema"."cohort_inclusion_result" (
  cohort_definition_id INT NOT NULL,
  inclusion_rule_mask INT NOT NULL,
  person_count INT NOT NULL,
  mode_id INT
);
CREATE TABLE IF NOT EXISTS "schema"."cohort_inclusion_stats" (
  cohort_definition_id INT NOT NULL,
  rule_sequence INT NOT NULL,
  person_count INT NOT NULL,
  gain_count INT NOT NULL,
  person_total INT NOT NULL,
  mode_id INT
);
CREATE TABLE IF NOT EXISTS "schema"."cohort_summary_stats" (
  cohort_definition_id INT NOT NULL,
  base_count INT NOT NULL,
  final_count INT NOT NULL,
  mode_id INT
);
CREATE TABLE IF NOT EXISTS "schema"."cohort_censor_stats" (
  cohort_definition_id INT NOT NULL,
  lost_count INT NOT NULL
)
