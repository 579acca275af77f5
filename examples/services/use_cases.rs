//! Application services in the user guide's style: use-case structs holding the
//! coordinator, as a service wires them with dependency injection.
//!
//! - `CreateUserUseCase` with `#[idempotent]`;
//! - `ConfirmSignupUseCase`, an orchestration that passes its key to downstream calls,
//!   each idempotent on its own, so a retry after a mid-way failure skips what is done;
//! - `SetPasswordUseCase`, an upsert through `coordinator.call(...)`.
//!
//! ```text
//! cargo run -p idempotency-examples-services --example use_cases
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use idempotency_coordinator::{Coordinator, IdempotencyError, MemoryStore, idempotent};
use serde::{Deserialize, Serialize};

/// The application's error, carrying the library's.
#[derive(Debug)]
enum AppError {
    Idempotency(IdempotencyError),
    UserAlreadyExists(String),
    /// A downstream call failed (simulated).
    Downstream(&'static str),
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Idempotency(e) => write!(f, "{e}"),
            Self::UserAlreadyExists(name) => write!(f, "user '{name}' already exists"),
            Self::Downstream(what) => write!(f, "downstream failure: {what}"),
        }
    }
}

impl From<IdempotencyError> for AppError {
    fn from(e: IdempotencyError) -> Self {
        Self::Idempotency(e)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct UserDto {
    id: u64,
    username: String,
}

#[derive(Debug, Clone, Serialize)]
struct CreateUserDto {
    username: String,
}

/// A stand-in for the users table.
#[derive(Debug, Default)]
struct Users {
    next_id: AtomicU64,
    by_name: Mutex<HashMap<String, u64>>,
}

struct CreateUserUseCase {
    users: Arc<Users>,
    idempotency_coordinator: Coordinator<MemoryStore>,
}

impl CreateUserUseCase {
    #[idempotent(operation = "user.create", fingerprint(dto))]
    async fn execute(
        &self,
        dto: CreateUserDto,
        idempotency_key: Option<String>,
    ) -> Result<UserDto, AppError> {
        let mut by_name = self
            .users
            .by_name
            .lock()
            .map_err(|_| AppError::Downstream("users lock"))?;
        if by_name.contains_key(&dto.username) {
            return Err(AppError::UserAlreadyExists(dto.username));
        }
        let id = self.users.next_id.fetch_add(1, Ordering::SeqCst) + 1;
        by_name.insert(dto.username.clone(), id);
        Ok(UserDto {
            id,
            username: dto.username,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct PasswordDto {
    user_id: u64,
    version: u32,
}

struct SetPasswordUseCase {
    passwords: Mutex<HashMap<u64, u32>>,
    coordinator: Coordinator<MemoryStore>,
}

impl SetPasswordUseCase {
    /// Create or replace: the same result whether the credential was created or updated,
    /// and at most once per key.
    async fn execute(
        &self,
        user_id: u64,
        idempotency_key: Option<&str>,
    ) -> Result<PasswordDto, AppError> {
        self.coordinator
            .call("password.set", idempotency_key)
            .run(|| async {
                let mut passwords = self
                    .passwords
                    .lock()
                    .map_err(|_| AppError::Downstream("passwords lock"))?;
                let version = passwords
                    .entry(user_id)
                    .and_modify(|v| *v += 1)
                    .or_insert(1);
                Ok(PasswordDto {
                    user_id,
                    version: *version,
                })
            })
            .await
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct ConfirmSignupResult {
    user_id: u64,
    password_version: u32,
}

struct ConfirmSignupUseCase {
    create_user: CreateUserUseCase,
    set_password: SetPasswordUseCase,
    fail_once: AtomicUsize,
    idempotency_coordinator: Coordinator<MemoryStore>,
}

impl ConfirmSignupUseCase {
    #[idempotent(operation = "signup.confirm")]
    async fn execute(
        &self,
        username: String,
        idempotency_key: Option<String>,
    ) -> Result<ConfirmSignupResult, AppError> {
        // Downstream calls get the same key: each is idempotent on its own.
        let user = self
            .create_user
            .execute(CreateUserDto { username }, idempotency_key.clone())
            .await?;
        if self.fail_once.fetch_sub(1, Ordering::SeqCst) == 1 {
            return Err(AppError::Downstream("verification-service timed out"));
        }
        let password = self
            .set_password
            .execute(user.id, idempotency_key.as_deref())
            .await?;
        Ok(ConfirmSignupResult {
            user_id: user.id,
            password_version: password.version,
        })
    }
}

#[tokio::main]
async fn main() -> Result<(), AppError> {
    // Logs to stderr, filtered by `RUST_LOG` (default `warn`; `RUST_LOG=debug` shows the
    // library's hits and misses).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    // One coordinator (one store) shared by every use case, as a DI container would.
    let coordinator = Coordinator::in_memory();
    let users = Arc::new(Users::default());
    let signup = ConfirmSignupUseCase {
        create_user: CreateUserUseCase {
            users: Arc::clone(&users),
            idempotency_coordinator: coordinator.clone(),
        },
        set_password: SetPasswordUseCase {
            passwords: Mutex::new(HashMap::new()),
            coordinator: coordinator.clone(),
        },
        fail_once: AtomicUsize::new(1),
        idempotency_coordinator: coordinator.clone(),
    };

    let key = Some("signup-7f3a".to_owned());
    let first = signup.execute("ada".into(), key.clone()).await;
    match &first {
        Ok(r) => println!("first attempt:  {r:?}"),
        Err(e) => println!("first attempt:  failed: {e}"),
    }
    let second = signup.execute("ada".into(), key.clone()).await?;
    println!("retry:          {second:?} (user created once, the step after the failure ran now)");
    let third = signup.execute("ada".into(), key).await?;
    println!("another retry:  {third:?} (replayed)");

    let direct = signup
        .create_user
        .execute(
            CreateUserDto {
                username: "ada".into(),
            },
            None,
        )
        .await;
    match &direct {
        Ok(user) => println!("no key:         {user:?}"),
        Err(e) => println!("no key:         {e} (no key: the body runs for real)"),
    }
    if let Err(AppError::Idempotency(e)) = &direct {
        println!(
            "                (an idempotency error would map to HTTP {})",
            e.http_status()
        );
    }
    Ok(())
}
