IF NOT EXISTS (SELECT * FROM INFORMATION_SCHEMA.TABLES WHERE TABLE_NAME = 'cohort_inclusion' AND TABLE_SCHEMA = 'schema') EXEC('CREATE TABLE [schema].[cohort_inclusion] (
  cohort_definition_id BIGINT NOT NULL,
  rule_sequence INTEGER NOT NULL,
  name VARCHAR(255),
  description VARCHAR(1000)
)');
IF NOT EXISTS (SELECT * FROM INFORMATION_SCHEMA.TABLES WHERE TABLE_NAME = 'cohort_inclusion_result' AND TABLE_SCHEMA = 'schema') EXEC('CREATE TABLE [schema].[cohort_inclusion_result] (
  cohort_definition_id BIGINT NOT NULL,
  inclusion_rule_mask BIGINT NOT NULL,
  person_count BIGINT NOT NULL,
  mode_id INTEGER
)');
IF NOT EXISTS (SELECT * FROM INFORMATION_SCHEMA.TABLES WHERE TABLE_NAME = 'cohort_inclusion_stats' AND TABLE_SCHEMA = 'schema') EXEC('CREATE TABLE [schema].[cohort_inclusion_stats] (
  cohort_definition_id BIGINT NOT NULL,
  rule_sequence INTEGER NOT NULL,
  person_count BIGINT NOT NULL,
  gain_count BIGINT NOT NULL,
  person_total BIGINT NOT NULL,
  mode_id INTEGER
)');
IF NOT EXISTS (SELECT * FROM INFORMATION_SCHEMA.TABLES WHERE TABLE_NAME = 'cohort_summary_stats' AND TABLE_SCHEMA = 'schema') EXEC('CREATE TABLE [schema].[cohort_summary_stats] (
  cohort_definition_id BIGINT NOT NULL,
  base_count BIGINT NOT NULL,
  final_count BIGINT NOT NULL,
  mode_id INTEGER
)');
IF NOT EXISTS (SELECT * FROM INFORMATION_SCHEMA.TABLES WHERE TABLE_NAME = 'cohort_censor_stats' AND TABLE_SCHEMA = 'schema') EXEC('CREATE TABLE [schema].[cohort_censor_stats] (
  cohort_definition_id BIGINT NOT NULL,
  lost_count BIGINT NOT NULL
)')
