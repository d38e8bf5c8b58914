SELECT
  CAST(`c_concept_id` AS INT64) AS concept_id,
  MIN(CAST(`c_name` AS STRING)) AS name
FROM `concept` AS c
WHERE
  CAST(`c_concept_id` AS INT64) IN (
    SELECT
      IF(pos = pos_2, col, NULL) AS col
    FROM UNNEST(GENERATE_ARRAY(0, GREATEST(ARRAY_LENGTH(CAST(:ids AS ARRAY<INT64>))) - 1)) AS pos
    CROSS JOIN UNNEST(CAST(:ids AS ARRAY<INT64>)) AS col WITH OFFSET AS pos_2
    WHERE
      pos = pos_2
      OR (
        pos > (
          ARRAY_LENGTH(CAST(:ids AS ARRAY<INT64>)) - 1
        )
        AND pos_2 = (
          ARRAY_LENGTH(CAST(:ids AS ARRAY<INT64>)) - 1
        )
      )
  )
GROUP BY
  1
