use idempotency_coordinator::{IdempotencyError, idempotent};

struct Service;

impl Service {
    #[idempotent(operation = "thing.make", fingerprint(amount, curency))]
    async fn make(&self, amount: u64, currency: String, idempotency_key: Option<String>) -> Result<u32, IdempotencyError> {
        Ok(1)
    }
}

fn main() {}
