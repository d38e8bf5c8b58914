WITH cand AS (
  SELECT
    key_id,
    'code' AS side,
    domain,
    code_vocab AS from_vocab,
    UPPER(TRIM(code_value)) AS v
  FROM k
  WHERE
    STARTS_WITH(code_vocab, 'SOURCE_') AND ARRAY_CONTAINS(:domains, domain)
  UNION ALL
  SELECT
    key_id,
    'source',
    domain,
    source_vocab,
    UPPER(TRIM(source_value))
  FROM k
  WHERE
    STARTS_WITH(source_vocab, 'SOURCE_') AND ARRAY_CONTAINS(:domains, domain)
), shaped AS (
  SELECT
    *,
    REPLACE(v, '.', '') AS norm,
    REGEXP_FULL_MATCH(v, '[0-9]{3}(\.?[0-9]{1,2})?')
    OR REGEXP_FULL_MATCH(v, 'V(0[1-9]|[1-8][0-9]|9[01])(\.?[0-9]{1,2})?')
    OR REGEXP_FULL_MATCH(v, 'E[0-9]{3}(\.?[0-9])?') AS is9,
    REGEXP_FULL_MATCH(v, '[A-Z][0-9][0-9A-Z](\.?[0-9A-Z]{1,4})?') AS is10
  FROM cand
), scored AS (
  SELECT
    s.key_id,
    s.side,
    s.domain,
    s.from_vocab,
    s.norm,
    CASE
      WHEN s.is9
      THEN GREATEST(COALESCE(n9.level, 0), CASE WHEN c9.node IS NULL THEN 0 ELSE 1 END)
    END AS s9,
    CASE
      WHEN s.is10
      THEN GREATEST(COALESCE(n10.level, 0), CASE WHEN c10.node IS NULL THEN 0 ELSE 1 END)
    END AS s10
  FROM shaped AS s
  LEFT JOIN n AS n9
    ON s.is9 AND n9.vocab = 'ICD9CM' AND n9.node = s.norm
  LEFT JOIN n AS c9
    ON s.is9
    AND c9.vocab = 'ICD9CM'
    AND c9.node = LEFT(s.norm, CASE WHEN s.norm LIKE 'E%' THEN 4 ELSE 3 END)
  LEFT JOIN n AS n10
    ON s.is10 AND n10.vocab = 'ICD10CM' AND n10.node = s.norm
  LEFT JOIN n AS c10
    ON s.is10 AND c10.vocab = 'ICD10CM' AND c10.node = LEFT(s.norm, 3)
), decided AS (
  SELECT
    *,
    CASE
      WHEN s9 IS NULL AND s10 IS NULL
      THEN NULL
      WHEN :lists AND GREATEST(COALESCE(s9, 0), COALESCE(s10, 0)) = 0
      THEN NULL
      WHEN s10 IS NULL
      THEN 'ICD9CM'
      WHEN s9 IS NULL
      THEN 'ICD10CM'
      WHEN s9 > s10
      THEN 'ICD9CM'
      WHEN s10 > s9
      THEN 'ICD10CM'
      WHEN norm LIKE 'V%' OR norm LIKE 'E9%'
      THEN 'ICD9CM'
      ELSE 'ICD10CM'
    END AS vocab,
    GREATEST(COALESCE(s9, 0), COALESCE(s10, 0)) AS score,
    COALESCE(s9 = s10, FALSE) AS ambiguous
  FROM scored
)
SELECT
  key_id,
  side,
  domain,
  from_vocab,
  vocab,
  CASE
    WHEN vocab IS NULL
    THEN NULL
    WHEN LENGTH(norm) <= 3
    OR (
      vocab = 'ICD9CM' AND norm LIKE 'E%' AND LENGTH(norm) = 4
    )
    THEN norm
    WHEN vocab = 'ICD9CM' AND norm LIKE 'E%'
    THEN LEFT(norm, 4) || '.' || SUBSTRING(norm, 5)
    ELSE LEFT(norm, 3) || '.' || SUBSTRING(norm, 4)
  END AS value,
  CASE
    WHEN vocab IS NULL AND s9 IS NULL AND s10 IS NULL
    THEN 'no ICD shape'
    WHEN vocab IS NULL
    THEN 'in no ICD code list'
    WHEN NOT :lists
    THEN 'shape only (code lists not installed)'
    WHEN score = 3
    THEN 'code in list'
    WHEN score = 2
    THEN 'category in list'
    ELSE 'its 3-character category in list'
  END AS evidence,
  ambiguous AND NOT vocab IS NULL AS ambiguous
FROM decided
