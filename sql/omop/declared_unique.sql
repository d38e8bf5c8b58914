-- 1 when the database itself declares a column unique (a one-column PRIMARY KEY or UNIQUE constraint, as the
-- official CDM primary-key script creates): then no row can repeat its id and the duplicate check is skipped.
SELECT 1
FROM information_schema.table_constraints tc
JOIN information_schema.key_column_usage k
  ON k.constraint_name = tc.constraint_name AND k.table_schema = tc.table_schema AND k.table_name = tc.table_name
WHERE tc.table_schema = :schema_name AND lower(tc.table_name) = :table_name
  AND tc.constraint_type IN ('PRIMARY KEY', 'UNIQUE')
GROUP BY tc.constraint_name
HAVING COUNT(*) = 1 AND lower(MAX(k.column_name)) = :column_name
