-- A value the ETL recorded in cdm_source, if any: cdm_version ('v5.4', '5.3.1') or vocabulary_version.
SELECT MAX(CAST({column} AS VARCHAR)) FROM {cdm_source_table}
