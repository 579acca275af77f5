-- Params: 1 prefix, 2 operation (NULL: every one), 3 status (NULL: every one), 4 and 5
-- the last (operation, key) of the previous page ('' and '' for the first), 6 page size.
-- Keyset pagination on the primary key: each page is one index range, however large
-- the table, and rows written meanwhile never shift a page.
SELECT operation, idempotency_key, status, fence, owner_token, record,
       extract(epoch FROM (expires_at - statement_timestamp()))::float8 AS ttl_seconds,
       expires_at <= statement_timestamp() AS expired,
       pg_column_size(r.*)::bigint AS row_bytes
FROM idempotency_records AS r
WHERE key_prefix = $1
  AND ($2::text IS NULL OR operation = $2)
  AND ($3::text IS NULL OR status = $3)
  AND (operation, idempotency_key) > ($4, $5)
ORDER BY operation, idempotency_key
LIMIT $6
