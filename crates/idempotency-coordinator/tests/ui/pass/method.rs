use idempotency_coordinator::{Coordinator, IdempotencyError, MemoryStore, idempotent};

struct Service {
    idempotency_coordinator: Coordinator<MemoryStore>,
}

impl Service {
    #[idempotent(operation = "thing.make", fingerprint(name))]
    async fn make(&self, name: String, idempotency_key: Option<String>) -> Result<String, IdempotencyError> {
        Ok(format!("made {name}"))
    }
}

fn main() {
    let _ = Service { idempotency_coordinator: Coordinator::in_memory() };
}
