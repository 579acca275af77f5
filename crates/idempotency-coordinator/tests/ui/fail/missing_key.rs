use idempotency_coordinator::{IdempotencyError, idempotent};

struct Service;

impl Service {
    #[idempotent(operation = "thing.make")]
    async fn make(&self, request: Option<String>) -> Result<u32, IdempotencyError> {
        Ok(1)
    }
}

fn main() {}
