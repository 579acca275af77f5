use idempotency_coordinator::{IdempotencyError, idempotent};

struct Service;

impl Service {
    #[idempotent(operation = "thing.make")]
    fn make(&self, idempotency_key: Option<String>) -> Result<u32, IdempotencyError> {
        Ok(1)
    }
}

fn main() {}
