CREATE TABLE IF NOT EXISTS `schema`.`cohort_inclusion` (
  cohort_definition_id INT64 NOT NULL,
  rule_sequence INT64 NOT NULL,
  name STRING(255),
  description STRING(1000)
);
CREATE TABLE IF NOT EXISTS `schema`.`cohort_inclusion_result` (
  cohort_definition_id INT64 NOT NULL,
  inclusion_rule_mask INT64 NOT NULL,
  person_count INT64 NOT NULL,
  mode_id INT64
);
CREATE TABLE IF NOT EXISTS `schema`.`cohort_inclusion_stats` (
  cohort_definition_id INT64 NOT NULL,
  rule_sequence INT64 NOT NULL,
  person_count INT64 NOT NULL,
  gain_count INT64 NOT NULL,
  person_total INT64 NOT NULL,
  mode_id INT64
);
CREATE TABLE IF NOT EXISTS `schema`.`cohort_summary_stats` (
  cohort_definition_id INT64 NOT NULL,
  base_count INT64 NOT NULL,
  final_count INT64 NOT NULL,
  mode_id INT64
);
CREATE TABLE IF NOT EXISTS `schema`.`cohort_censor_stats` (
  cohort_definition_id INT64 NOT NULL,
  lost_count INT64 NOT NULL
)
