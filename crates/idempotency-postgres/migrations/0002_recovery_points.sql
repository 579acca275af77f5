-- idempotency-postgres schema, version 2: recovery points of multi-step runs
-- (PostgresStore::run_steps). Applied by `idempotency_postgres::migrate` after version 1,
-- once per database, under the same transaction-scoped advisory lock. Every statement
-- is idempotent on its own as well. Rows of other calls keep NULL in all three columns.

ALTER TABLE idempotency_records
    -- The run: set when a multi-step run starts on a free or expired key (the owner
    -- token of the lease that started it), kept when another owner resumes the run, so
    -- every step key derived from it is the same on every retry of this run and differs
    -- for a later run under the same key (after the record expired). NULL on other rows.
    ADD COLUMN IF NOT EXISTS run_id         text,
    -- The last step whose work committed: 'started' when none has yet, else the step's
    -- name. NULL on other rows (and once the run completed).
    ADD COLUMN IF NOT EXISTS recovery_point text,
    -- The committed steps in order, as JSON text: [{"step": name, "output": value}, ...].
    -- A resumed run reads each committed step's output here instead of running it.
    ADD COLUMN IF NOT EXISTS step_state     text;
