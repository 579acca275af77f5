SELECT record FROM idempotency_records
WHERE key_prefix = $1 AND operation = $2 AND idempotency_key = $3
  AND expires_at > statement_timestamp()
