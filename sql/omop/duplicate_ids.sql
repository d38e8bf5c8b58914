-- How many rows of a table repeat another row's record, and how many share their row id with another record.
-- A duplicate repeats the record: same row id, person, start date, concept and source value (a row loaded
-- twice; the events query keeps the most complete and quarantines the rest). Rows that share an id but differ
-- in person, date or code are different records (an id collision, common when an ETL unions sources): kept,
-- and only counted. Runs only when repeated_ids.sql found a repeated id.
WITH g AS (
    SELECT {row_id} AS id, COUNT(*) AS n
    FROM {table} e
    WHERE {row_id} IS NOT NULL
    GROUP BY {record}
)
SELECT
    (SELECT COALESCE(SUM(n - 1), 0) FROM g WHERE n > 1) AS duplicate_rows,
    (SELECT COALESCE(SUM(k), 0) FROM (SELECT id, SUM(n) AS k FROM g GROUP BY id HAVING COUNT(*) > 1) x)
        AS shared_id_rows
