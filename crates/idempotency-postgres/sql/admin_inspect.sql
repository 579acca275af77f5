-- Params: 1 prefix, 2 operation, 3 key. One row, read whole, with the server's view of
-- it: expired rows are returned too (flagged), since the sweep may not have run yet.
SELECT operation, idempotency_key, status, fence, owner_token, record,
       extract(epoch FROM (expires_at - statement_timestamp()))::float8 AS ttl_seconds,
       expires_at <= statement_timestamp() AS expired,
       pg_column_size(r.*)::bigint AS row_bytes
FROM idempotency_records AS r
WHERE key_prefix = $1 AND operation = $2 AND idempotency_key = $3
