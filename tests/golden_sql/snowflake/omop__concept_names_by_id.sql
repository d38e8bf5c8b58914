SELECT
  CAST("c_concept_id" AS BIGINT) AS concept_id,
  MIN(CAST("c_name" AS VARCHAR)) AS name
FROM "concept" AS c
WHERE
  CAST("c_concept_id" AS BIGINT) IN (
    SELECT
      IFF(_u.pos = _u_2.pos_2, _u_2.col, NULL) AS col
    FROM TABLE(FLATTEN(INPUT => ARRAY_GENERATE_RANGE(0, (
      GREATEST(ARRAY_SIZE(CAST(:ids AS ARRAY(BIGINT)))) - 1
    ) + 1))) AS _u(seq, key, path, index, pos, this)
    CROSS JOIN TABLE(FLATTEN(INPUT => CAST(:ids AS ARRAY(BIGINT)))) AS _u_2(seq, key, path, pos_2, col, this)
    WHERE
      _u.pos = _u_2.pos_2
      OR (
        _u.pos > (
          ARRAY_SIZE(CAST(:ids AS ARRAY(BIGINT))) - 1
        )
        AND _u_2.pos_2 = (
          ARRAY_SIZE(CAST(:ids AS ARRAY(BIGINT))) - 1
        )
      )
  )
GROUP BY
  1
