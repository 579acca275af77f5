-- Params: 1 prefix, 2 operation (NULL: every one). Rows grouped by operation, status
-- and remaining lifetime (by the server's clock), with their on-disk size.
SELECT operation, status,
       CASE
           WHEN expires_at <= statement_timestamp() THEN 'expired'
           WHEN expires_at - statement_timestamp() < interval '1 minute' THEN '<1m'
           WHEN expires_at - statement_timestamp() < interval '10 minutes' THEN '1m-10m'
           WHEN expires_at - statement_timestamp() < interval '1 hour' THEN '10m-1h'
           WHEN expires_at - statement_timestamp() < interval '1 day' THEN '1h-1d'
           ELSE '>=1d'
       END AS bucket,
       count(*)::bigint AS rows,
       sum(pg_column_size(r.*))::bigint AS bytes
FROM idempotency_records AS r
WHERE key_prefix = $1 AND ($2::text IS NULL OR operation = $2)
GROUP BY 1, 2, 3
