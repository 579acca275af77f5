UPDATE idempotency_records AS r
SET expires_at = n.t + n.d, lease_expires_at = n.t + n.d,
    record = $5::text || idempotency_record_time(r.created_at) || '","expires_at":"'
        || idempotency_record_time(n.t + n.d) || $6::text
FROM (SELECT statement_timestamp() AS t, $7::bigint * interval '1 microsecond' AS d) AS n
WHERE r.key_prefix = $1 AND r.operation = $2 AND r.idempotency_key = $3
  AND r.status = 'pending' AND r.owner_token = $4 AND r.expires_at > n.t
RETURNING r.fence
