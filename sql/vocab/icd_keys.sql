-- The keys k with the ICD vocabulary read from their shape (i: icd_infer.sql rows) put in place of
-- SOURCE_<DOMAIN>: code / source_code become 'ICD10CM/E11.9' (dotted, as OMOP writes ICD codes), their
-- vocab / value parts follow. Keys keep their key_id; unread codes stay as they were.
SELECT
    k.key_id, k.domain,
    CASE WHEN c.vocab IS NOT NULL THEN c.vocab || '/' || c.value ELSE k.code END AS code,
    CASE WHEN s.vocab IS NOT NULL THEN s.vocab || '/' || s.value ELSE k.source_code END AS source_code,
    k.concept_id, k.source_concept_id,
    COALESCE(c.vocab, k.code_vocab) AS code_vocab,
    COALESCE(c.value, k.code_value) AS code_value,
    COALESCE(s.vocab, k.source_vocab) AS source_vocab,
    COALESCE(s.value, k.source_value) AS source_value,
    k.n_events, k.n_persons
FROM k
LEFT JOIN i c ON c.key_id = k.key_id AND c.side = 'code' AND c.vocab IS NOT NULL
LEFT JOIN i s ON s.key_id = k.key_id AND s.side = 'source' AND s.vocab IS NOT NULL
ORDER BY k.key_id
