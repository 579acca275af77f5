//! The `#[idempotent]` attribute of idempotency-kit. Use it through
//! `idempotency_coordinator::idempotent`; the expansion refers to that crate. Every
//! argument is shown with a compiling example on [`macro@idempotent`].

#![cfg_attr(docsrs, feature(doc_cfg))]

mod attr;
mod expand;

use proc_macro::TokenStream;

/// Makes an async method or function idempotent through a coordinator: the body runs at
/// most once per key while its caller awaits it, and every retry gets the stored result.
///
/// **What holds, exactly.** By default (`attached`, `Call::run`) the body runs inside the
/// caller's future. If that future is dropped after the body started (a client
/// disconnect, an outer timeout), the body stops where it is, the key is released, and a
/// retry runs the body again: at most once per key among callers that are not cut
/// mid-body. With `detached` (`Call::run_detached`, below) the body runs as a spawned
/// task that finishes and stores its result even when its caller is gone, so a retry
/// replays it; the body must then own what it uses. Neither survives the process or
/// its runtime ending mid-body (see `docs/coordinator.md`, "What survives what").
///
/// The function must be `async` and return `Result<T, E>` with `E:
/// From<IdempotencyError>`; `T` is stored with the adapter (serde by default).
///
/// # `operation = "…"` (required)
/// The operation name. With only it, the key is the parameter `idempotency_key`
/// (`Option<String>` or `Option<&str>`; `None` runs the body without idempotency) and the
/// coordinator is `self.idempotency_coordinator`.
/// ```
/// use idempotency_coordinator::{Coordinator, IdempotencyError, MemoryStore, idempotent};
///
/// struct Users {
///     idempotency_coordinator: Coordinator<MemoryStore>,
/// }
///
/// impl Users {
///     #[idempotent(operation = "user.create")]
///     async fn create(&self, name: String, idempotency_key: Option<String>) -> Result<String, IdempotencyError> {
///         Ok(name)
///     }
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), IdempotencyError> {
/// let users = Users { idempotency_coordinator: Coordinator::in_memory() };
/// assert_eq!(users.create("ada".into(), Some("k1".into())).await?, "ada");
/// assert_eq!(users.create("bob".into(), Some("k1".into())).await?, "ada"); // replayed
/// assert_eq!(users.create("bob".into(), None).await?, "bob"); // no key: just runs
/// # Ok(()) }
/// ```
///
/// # `key = param`
/// Another parameter holds the key.
/// ```
/// # use idempotency_coordinator::{Coordinator, IdempotencyError, MemoryStore, idempotent};
/// # struct Orders { idempotency_coordinator: Coordinator<MemoryStore> }
/// impl Orders {
///     #[idempotent(operation = "order.create", key = request_id)]
///     async fn create(&self, request_id: Option<&str>, total: u64) -> Result<u64, IdempotencyError> {
///         Ok(total)
///     }
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), IdempotencyError> {
/// # let orders = Orders { idempotency_coordinator: Coordinator::in_memory() };
/// assert_eq!(orders.create(Some("r1"), 10).await?, 10);
/// assert_eq!(orders.create(Some("r1"), 99).await?, 10);
/// # Ok(()) }
/// ```
///
/// # `fingerprint(a, b, …)`
/// Parameters (`Serialize`) whose values identify the request: the same key with
/// another payload is refused as a key reuse instead of replaying the wrong result.
/// ```
/// # use idempotency_coordinator::{Coordinator, IdempotencyError, MemoryStore, idempotent};
/// # struct Pay { idempotency_coordinator: Coordinator<MemoryStore> }
/// impl Pay {
///     #[idempotent(operation = "payment.charge", fingerprint(amount))]
///     async fn charge(&self, amount: u64, idempotency_key: Option<String>) -> Result<u64, IdempotencyError> {
///         Ok(amount)
///     }
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), IdempotencyError> {
/// # let pay = Pay { idempotency_coordinator: Coordinator::in_memory() };
/// assert_eq!(pay.charge(5, Some("k".into())).await?, 5);
/// let reused = pay.charge(6, Some("k".into())).await;
/// assert!(reused.is_err_and(|e| e.http_status() == 422));
/// # Ok(()) }
/// ```
///
/// # `ttl_secs = N`
/// The stored result's lifetime in seconds (within the coordinator's TTL bounds).
/// ```
/// # use idempotency_coordinator::{Coordinator, IdempotencyError, MemoryStore, idempotent};
/// # struct Reports { idempotency_coordinator: Coordinator<MemoryStore> }
/// impl Reports {
///     #[idempotent(operation = "report.build", ttl_secs = 600)]
///     async fn build(&self, idempotency_key: Option<String>) -> Result<u32, IdempotencyError> {
///         Ok(7)
///     }
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), IdempotencyError> {
/// # let reports = Reports { idempotency_coordinator: Coordinator::in_memory() };
/// assert_eq!(reports.build(Some("k".into())).await?, 7);
/// # Ok(()) }
/// ```
///
/// # `coordinator = expr`
/// Where the coordinator comes from (any expression in scope; free functions too).
/// ```
/// use idempotency_coordinator::{Coordinator, IdempotencyError, MemoryStore, idempotent};
///
/// #[idempotent(operation = "mail.send", coordinator = coordinator)]
/// async fn send(coordinator: &Coordinator<MemoryStore>, to: &str, idempotency_key: Option<&str>) -> Result<String, IdempotencyError> {
///     Ok(format!("sent to {to}"))
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), IdempotencyError> {
/// let coordinator = Coordinator::in_memory();
/// assert_eq!(send(&coordinator, "a@x", Some("m1")).await?, "sent to a@x");
/// assert_eq!(send(&coordinator, "b@x", Some("m1")).await?, "sent to a@x");
/// # Ok(()) }
/// ```
///
/// # `adapter = expr`
/// How the result is stored (default: serde on the success type); here raw JSON values.
/// ```
/// use idempotency_coordinator::{Coordinator, IdempotencyError, JsonAdapter, MemoryStore, idempotent};
///
/// #[idempotent(operation = "doc.render", coordinator = coordinator, adapter = JsonAdapter)]
/// async fn render(coordinator: &Coordinator<MemoryStore>, idempotency_key: Option<&str>) -> Result<serde_json::Value, IdempotencyError> {
///     Ok(serde_json::json!({"pages": 3}))
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), IdempotencyError> {
/// # let coordinator = Coordinator::in_memory();
/// assert_eq!(render(&coordinator, Some("d1")).await?["pages"], 3);
/// # Ok(()) }
/// ```
///
/// # `detached`: the body finishes even if its caller goes away
/// The body runs as a spawned task; it must be `'static + Send` (owned parameters,
/// `self: Arc<Self>`; a body that uses `&self` or a borrowed parameter does not compile).
/// Use it for bodies with side effects (a charge, a mail).
/// ```
/// use idempotency_coordinator::{Coordinator, IdempotencyError, MemoryStore, idempotent};
///
/// #[idempotent(operation = "mail.send", coordinator = coordinator, detached)]
/// async fn send(coordinator: &Coordinator<MemoryStore>, to: String, idempotency_key: Option<String>) -> Result<String, IdempotencyError> {
///     Ok(format!("sent to {to}"))
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), IdempotencyError> {
/// let coordinator = Coordinator::in_memory();
/// assert_eq!(send(&coordinator, "a@x".into(), Some("m1".into())).await?, "sent to a@x");
/// assert_eq!(send(&coordinator, "b@x".into(), Some("m1".into())).await?, "sent to a@x");
/// # Ok(()) }
/// ```
#[proc_macro_attribute]
pub fn idempotent(args: TokenStream, item: TokenStream) -> TokenStream {
    let args = match attr::Args::parse(args.into()) {
        Ok(args) => args,
        Err(e) => return e.to_compile_error().into(),
    };
    let function = match syn::parse::<syn::ItemFn>(item) {
        Ok(f) => f,
        Err(e) => return e.to_compile_error().into(),
    };
    let original = function.clone();
    match expand::expand(&args, function) {
        Ok(tokens) => tokens.into(),
        // The function stays as written, so its callers get no follow-on errors.
        Err(e) => {
            let mut out = e.to_compile_error();
            quote::ToTokens::to_tokens(&original, &mut out);
            out.into()
        }
    }
}
