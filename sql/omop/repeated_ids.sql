-- 1 when some row id of a table occurs more than once: one aggregate over the id column, the only cost of the
-- duplicate check on a table without repeated ids (duplicate_ids.sql then runs only when one does).
SELECT 1 FROM {table} e WHERE {row_id} IS NOT NULL GROUP BY {row_id} HAVING COUNT(*) > 1 LIMIT 1
