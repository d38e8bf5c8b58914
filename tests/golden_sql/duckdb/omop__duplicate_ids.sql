WITH g AS (
  SELECT
    e."DRUG_EXPOSURE_ID" AS id,
    COUNT(*) AS n
  FROM "main"."drug_exposure" AS e
  WHERE
    NOT e."DRUG_EXPOSURE_ID" IS NULL
  GROUP BY
    e."DRUG_EXPOSURE_ID",
    e."PERSON_ID",
    e."DRUG_EXPOSURE_START_DATE",
    e."DRUG_CONCEPT_ID",
    e."DRUG_SOURCE_VALUE"
)
SELECT
  (
    SELECT
      COALESCE(SUM(n - 1), 0)
    FROM g
    WHERE
      n > 1
  ) AS duplicate_rows,
  (
    SELECT
      COALESCE(SUM(k), 0)
    FROM (
      SELECT
        id,
        SUM(n) AS k
      FROM g
      GROUP BY
        id
      HAVING
        COUNT(*) > 1
    ) AS x
  ) AS shared_id_rows
