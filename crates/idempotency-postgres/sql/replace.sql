WITH written AS (
    INSERT INTO idempotency_records AS r
        (key_prefix, operation, idempotency_key, status, fingerprint, owner_token, fence,
         record, created_at, expires_at, lease_expires_at)
    SELECT $1, $2, $3, $4, $5, $6, nextval('idempotency_fence_seq'), $7, n.t, n.t + n.d,
           CASE WHEN $4 = 'pending' THEN n.t + n.d END
    FROM (SELECT statement_timestamp() AS t, $8::bigint * interval '1 microsecond' AS d) AS n
    ON CONFLICT (key_prefix, operation, idempotency_key) DO UPDATE
        SET status = excluded.status, fingerprint = excluded.fingerprint,
            owner_token = excluded.owner_token, fence = excluded.fence,
            record = excluded.record, created_at = excluded.created_at,
            expires_at = excluded.expires_at, lease_expires_at = excluded.lease_expires_at,
            run_id = NULL, recovery_point = NULL, step_state = NULL
    RETURNING r.status
),
woken AS (SELECT pg_notify($9, $10) FROM written WHERE status <> 'pending')
SELECT (SELECT count(*) FROM written) AS written, (SELECT count(*) FROM woken) AS woken
