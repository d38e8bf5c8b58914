-- One row when concept_ancestor holds any row, none when it is empty (a header-only export, say).
SELECT 1 AS present FROM {concept_ancestor} LIMIT 1
