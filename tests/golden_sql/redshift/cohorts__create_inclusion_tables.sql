CREATE TABLE IF NOT EXISTS "schema"."cohort_inclusion" (
  cohort_definition_id BIGINT NOT NULL,
  rule_sequence INTEGER NOT NULL,
  name VARCHAR(255),
  description VARCHAR(1000)
);
CREATE TABLE IF NOT EXISTS "schema"."cohort_inclusion_result" (
  cohort_definition_id BIGINT NOT NULL,
  inclusion_rule_mask BIGINT NOT NULL,
  person_count BIGINT NOT NULL,
  mode_id INTEGER
);
CREATE TABLE IF NOT EXISTS "schema"."cohort_inclusion_stats" (
  cohort_definition_id BIGINT NOT NULL,
  rule_sequence INTEGER NOT NULL,
  person_count BIGINT NOT NULL,
  gain_count BIGINT NOT NULL,
  person_total BIGINT NOT NULL,
  mode_id INTEGER
);
CREATE TABLE IF NOT EXISTS "schema"."cohort_summary_stats" (
  cohort_definition_id BIGINT NOT NULL,
  base_count BIGINT NOT NULL,
  final_count BIGINT NOT NULL,
  mode_id INTEGER
);
CREATE TABLE IF NOT EXISTS "schema"."cohort_censor_stats" (
  cohort_definition_id BIGINT NOT NULL,
  lost_count BIGINT NOT NULL
)
