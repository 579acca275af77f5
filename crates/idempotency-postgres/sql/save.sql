INSERT INTO idempotency_records AS r
    (key_prefix, operation, idempotency_key, status, fingerprint, owner_token, fence,
     record, created_at, expires_at, lease_expires_at)
SELECT $1, b.operation, b.idempotency_key, b.status, b.fingerprint, b.owner_token,
       nextval('idempotency_fence_seq'), b.record, n.t, n.t + b.d,
       CASE WHEN b.status = 'pending' THEN n.t + b.d END
FROM (SELECT statement_timestamp() AS t) AS n,
     (SELECT operation, idempotency_key, status, fingerprint, owner_token, record,
             micros * interval '1 microsecond' AS d
      FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                  $8::bigint[])
           AS u(operation, idempotency_key, status, fingerprint, owner_token, record, micros)
     ) AS b
ON CONFLICT (key_prefix, operation, idempotency_key) DO UPDATE
    SET status = excluded.status, fingerprint = excluded.fingerprint,
        owner_token = excluded.owner_token, fence = excluded.fence,
        record = excluded.record, created_at = excluded.created_at,
        expires_at = excluded.expires_at, lease_expires_at = excluded.lease_expires_at,
        run_id = NULL, recovery_point = NULL, step_state = NULL
    WHERE r.expires_at <= statement_timestamp()
RETURNING r.idempotency_key
