//! The `#[idempotent]` attribute of idempotency-kit. Use it through
//! `idempotency_coordinator::idempotent`; the expansion refers to that crate.
//!
//! ```ignore
//! #[idempotent(operation = "user.create", fingerprint(dto))]
//! async fn execute(&self, dto: CreateUser, idempotency_key: Option<String>) -> Result<User, AppError> {
//!     /* runs at most once per key */
//! }
//! ```
//!
//! Arguments:
//! - `operation = "…"` (required): the operation name;
//! - `key = param` (default `idempotency_key`): the key parameter, `Option<String>` or
//!   `Option<&str>`; `None` runs the body without idempotency;
//! - `fingerprint(a, b, …)`: parameters whose values identify the request (`Serialize`);
//! - `ttl_secs = N`: the record's lifetime;
//! - `coordinator = expr` (default `self.idempotency_coordinator`);
//! - `adapter = expr` (default `SerdeAdapter` on the success type).

mod attr;
mod expand;

use proc_macro::TokenStream;

/// Makes an async method or function idempotent through a coordinator. See the crate
/// docs for the arguments.
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
