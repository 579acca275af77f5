SELECT r.idempotency_key, r.record
FROM idempotency_records AS r
JOIN unnest($2::text[], $3::text[]) AS k(operation, idempotency_key)
  ON r.operation = k.operation AND r.idempotency_key = k.idempotency_key
WHERE r.key_prefix = $1 AND r.expires_at > statement_timestamp()
