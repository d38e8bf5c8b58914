WITH wanted AS (
  SELECT
    IFF(_u.pos = _u_2.pos_2, _u_2.vocabulary_id, NULL) AS vocabulary_id,
    IFF(_u.pos = _u_3.pos_3, _u_3.concept_code, NULL) AS concept_code
  FROM TABLE(FLATTEN(INPUT => ARRAY_GENERATE_RANGE(
    0,
    (
      GREATEST(
        ARRAY_SIZE(CAST(:vocabs AS ARRAY(VARCHAR))),
        ARRAY_SIZE(CAST(:codes AS ARRAY(VARCHAR)))
      ) - 1
    ) + 1
  ))) AS _u(seq, key, path, index, pos, this)
  CROSS JOIN TABLE(FLATTEN(INPUT => CAST(:vocabs AS ARRAY(VARCHAR)))) AS _u_2(seq, key, path, pos_2, vocabulary_id, this)
  CROSS JOIN TABLE(FLATTEN(INPUT => CAST(:codes AS ARRAY(VARCHAR)))) AS _u_3(seq, key, path, pos_3, concept_code, this)
  WHERE
    (
      _u.pos = _u_2.pos_2
      OR (
        _u.pos > (
          ARRAY_SIZE(CAST(:vocabs AS ARRAY(VARCHAR))) - 1
        )
        AND _u_2.pos_2 = (
          ARRAY_SIZE(CAST(:vocabs AS ARRAY(VARCHAR))) - 1
        )
      )
    )
    AND (
      _u.pos = _u_3.pos_3
      OR (
        _u.pos > (
          ARRAY_SIZE(CAST(:codes AS ARRAY(VARCHAR))) - 1
        )
        AND _u_3.pos_3 = (
          ARRAY_SIZE(CAST(:codes AS ARRAY(VARCHAR))) - 1
        )
      )
    )
)
SELECT
  w.vocabulary_id || '/' || w.concept_code AS token,
  MIN(CAST(c."CONCEPT_NAME" AS VARCHAR)) AS name,
  MIN(CAST(c."DOMAIN_ID" AS VARCHAR)) AS domain
FROM wanted AS w
JOIN "main"."concept" AS c
  ON CAST(c."VOCABULARY_ID" AS VARCHAR) = w.vocabulary_id
  AND CAST(c."CONCEPT_CODE" AS VARCHAR) = w.concept_code
GROUP BY
  1
