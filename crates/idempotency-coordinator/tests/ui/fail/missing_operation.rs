use idempotency_coordinator::{IdempotencyError, idempotent};

struct Service;

impl Service {
    #[idempotent(fingerprint(amount))]
    async fn make(&self, amount: u64, idempotency_key: Option<String>) -> Result<u32, IdempotencyError> {
        Ok(1)
    }
}

fn main() {}
