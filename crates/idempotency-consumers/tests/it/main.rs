//! Integration tests of the consumers: NATS JetStream on a throwaway `nats-server -js`,
//! RabbitMQ on the local broker (a virtual host per test), PostgreSQL and Redis from the
//! test kit. The kill tests re-run this binary as worker processes
//! (`IDEM_CONSUMER_WORKER` set), which they SIGKILL and restart.

mod amqp;
mod bench;
mod common;
mod kill;
mod nats;
mod worker;

/// The entry point of a worker process: a no-op in a normal test run.
#[test]
fn worker_process() {
    if let Ok(role) = std::env::var(worker::ROLE_VAR) {
        worker::run(&role);
    }
}
