-- Read ICD-9-CM or ICD-10-CM from the shape of the codes that arrive without a vocabulary
-- (SOURCE_<DOMAIN>/<value>: the source concept id did not resolve), for the keys k of the domains bound as
-- $domains; nodes n(vocab, node, level) from icd_nodes.sql ($lists: whether n holds the code lists).
-- One row per (key, side): side 'code' or 'source', the vocabulary read (NULL: not recognised), the dotted
-- code, the evidence and whether both shapes fitted. Rules (omop_behrt/icd.py documents them):
--   ICD-9-CM  : 3 digits [+ 1-2 digits]; V01-V91 [+ 1-2 digits]; E000-E999 [+ 1 digit]
--   ICD-10-CM : a letter, a digit, a digit or letter [+ 1-4 digits or letters]
--   (a dot is accepted where the code has it: after the category; codes are compared undotted)
-- Evidence per fitting shape: 3 the code is in that list, 2 a category/subcategory of it, 1 its category is,
-- 0 none. The better evidence wins; a tie (only V and E codes fit both shapes) goes to ICD-9-CM for V codes
-- (ICD-10-CM V codes always carry 7 characters) and E9 codes (ICD-10-CM has no E9x), to ICD-10-CM for other
-- E codes (E00-E89 endocrine diagnoses against ICD-9-CM's supplementary external-cause codes).
-- With the lists, a code that no list knows (evidence 0) is not read.
WITH cand AS (
    SELECT key_id, 'code' AS side, domain, code_vocab AS from_vocab, upper(trim(code_value)) AS v
    FROM k WHERE starts_with(code_vocab, 'SOURCE_') AND list_contains($domains, domain)
    UNION ALL
    SELECT key_id, 'source', domain, source_vocab, upper(trim(source_value))
    FROM k WHERE starts_with(source_vocab, 'SOURCE_') AND list_contains($domains, domain)
),
shaped AS (
    SELECT *, replace(v, '.', '') AS norm,
        regexp_full_match(v, '[0-9]{3}(\.?[0-9]{1,2})?')
            OR regexp_full_match(v, 'V(0[1-9]|[1-8][0-9]|9[01])(\.?[0-9]{1,2})?')
            OR regexp_full_match(v, 'E[0-9]{3}(\.?[0-9])?') AS is9,
        regexp_full_match(v, '[A-Z][0-9][0-9A-Z](\.?[0-9A-Z]{1,4})?') AS is10
    FROM cand
),
scored AS (   -- nodes are unique per (vocab, node): each join adds at most one row
    SELECT s.key_id, s.side, s.domain, s.from_vocab, s.norm,
        CASE WHEN s.is9 THEN GREATEST(COALESCE(n9.level, 0), CASE WHEN c9.node IS NULL THEN 0 ELSE 1 END) END AS s9,
        CASE WHEN s.is10 THEN GREATEST(COALESCE(n10.level, 0), CASE WHEN c10.node IS NULL THEN 0 ELSE 1 END) END
            AS s10
    FROM shaped s
    LEFT JOIN n n9 ON s.is9 AND n9.vocab = 'ICD9CM' AND n9.node = s.norm
    LEFT JOIN n c9 ON s.is9 AND c9.vocab = 'ICD9CM'
                  AND c9.node = left(s.norm, CASE WHEN s.norm LIKE 'E%' THEN 4 ELSE 3 END)
    LEFT JOIN n n10 ON s.is10 AND n10.vocab = 'ICD10CM' AND n10.node = s.norm
    LEFT JOIN n c10 ON s.is10 AND c10.vocab = 'ICD10CM' AND c10.node = left(s.norm, 3)
),
decided AS (
    SELECT *,
        CASE
            WHEN s9 IS NULL AND s10 IS NULL THEN NULL
            WHEN $lists AND GREATEST(COALESCE(s9, 0), COALESCE(s10, 0)) = 0 THEN NULL
            WHEN s10 IS NULL THEN 'ICD9CM'
            WHEN s9 IS NULL THEN 'ICD10CM'
            WHEN s9 > s10 THEN 'ICD9CM'
            WHEN s10 > s9 THEN 'ICD10CM'
            WHEN norm LIKE 'V%' OR norm LIKE 'E9%' THEN 'ICD9CM'
            ELSE 'ICD10CM'
        END AS vocab,
        GREATEST(COALESCE(s9, 0), COALESCE(s10, 0)) AS score,
        COALESCE(s9 = s10, false) AS ambiguous
    FROM scored
)
SELECT key_id, side, domain, from_vocab, vocab,
    CASE
        WHEN vocab IS NULL THEN NULL
        WHEN length(norm) <= 3 OR (vocab = 'ICD9CM' AND norm LIKE 'E%' AND length(norm) = 4) THEN norm
        WHEN vocab = 'ICD9CM' AND norm LIKE 'E%' THEN left(norm, 4) || '.' || substr(norm, 5)
        ELSE left(norm, 3) || '.' || substr(norm, 4)
    END AS value,
    CASE WHEN vocab IS NULL AND s9 IS NULL AND s10 IS NULL THEN 'no ICD shape'
         WHEN vocab IS NULL THEN 'in no ICD code list'
         WHEN NOT $lists THEN 'shape only (code lists not installed)'
         WHEN score = 3 THEN 'code in list'
         WHEN score = 2 THEN 'category in list'
         ELSE 'its 3-character category in list'
    END AS evidence,
    ambiguous AND vocab IS NOT NULL AS ambiguous
FROM decided
