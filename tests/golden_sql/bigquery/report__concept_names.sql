WITH wanted AS (
  SELECT
    IF(pos = pos_2, vocabulary_id, NULL) AS vocabulary_id,
    IF(pos = pos_3, concept_code, NULL) AS concept_code
  FROM UNNEST(GENERATE_ARRAY(
    0,
    GREATEST(
      ARRAY_LENGTH(CAST(:vocabs AS ARRAY<STRING>)),
      ARRAY_LENGTH(CAST(:codes AS ARRAY<STRING>))
    ) - 1
  )) AS pos
  CROSS JOIN UNNEST(CAST(:vocabs AS ARRAY<STRING>)) AS vocabulary_id WITH OFFSET AS pos_2
  CROSS JOIN UNNEST(CAST(:codes AS ARRAY<STRING>)) AS concept_code WITH OFFSET AS pos_3
  WHERE
    (
      pos = pos_2
      OR (
        pos > (
          ARRAY_LENGTH(CAST(:vocabs AS ARRAY<STRING>)) - 1
        )
        AND pos_2 = (
          ARRAY_LENGTH(CAST(:vocabs AS ARRAY<STRING>)) - 1
        )
      )
    )
    AND (
      pos = pos_3
      OR (
        pos > (
          ARRAY_LENGTH(CAST(:codes AS ARRAY<STRING>)) - 1
        )
        AND pos_3 = (
          ARRAY_LENGTH(CAST(:codes AS ARRAY<STRING>)) - 1
        )
      )
    )
)
SELECT
  w.vocabulary_id || '/' || w.concept_code AS token,
  MIN(CAST(c.`CONCEPT_NAME` AS STRING)) AS name,
  MIN(CAST(c.`DOMAIN_ID` AS STRING)) AS domain
FROM wanted AS w
JOIN `main`.`concept` AS c
  ON CAST(c.`VOCABULARY_ID` AS STRING) = w.vocabulary_id
  AND CAST(c.`CONCEPT_CODE` AS STRING) = w.concept_code
GROUP BY
  1
