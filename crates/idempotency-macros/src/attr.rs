//! Parsing the attribute's arguments.

use proc_macro2::{Span, TokenStream};
use syn::parse::Parser;
use syn::{Expr, Ident, LitInt, LitStr};

/// The parsed arguments.
pub(crate) struct Args {
    pub(crate) operation: LitStr,
    pub(crate) key: Option<Ident>,
    pub(crate) fingerprint: Vec<Ident>,
    pub(crate) ttl_secs: Option<LitInt>,
    pub(crate) coordinator: Option<Expr>,
    pub(crate) adapter: Option<Expr>,
    /// `detached`: the body runs as a spawned task (`run_detached`).
    pub(crate) detached: bool,
}

impl Args {
    pub(crate) fn parse(tokens: TokenStream) -> syn::Result<Self> {
        let mut operation = None;
        let mut key = None;
        let mut fingerprint = Vec::new();
        let mut ttl_secs = None;
        let mut coordinator = None;
        let mut adapter = None;
        let mut detached = false;
        let parser = syn::meta::parser(|meta| {
            if meta.path.is_ident("operation") {
                operation = Some(meta.value()?.parse::<LitStr>()?);
            } else if meta.path.is_ident("key") {
                key = Some(meta.value()?.parse::<Ident>()?);
            } else if meta.path.is_ident("fingerprint") {
                meta.parse_nested_meta(|inner| {
                    let ident = inner
                        .path
                        .get_ident()
                        .cloned()
                        .ok_or_else(|| inner.error("expected a parameter name"))?;
                    fingerprint.push(ident);
                    Ok(())
                })?;
            } else if meta.path.is_ident("ttl_secs") {
                ttl_secs = Some(meta.value()?.parse::<LitInt>()?);
            } else if meta.path.is_ident("coordinator") {
                coordinator = Some(meta.value()?.parse::<Expr>()?);
            } else if meta.path.is_ident("adapter") {
                adapter = Some(meta.value()?.parse::<Expr>()?);
            } else if meta.path.is_ident("detached") {
                detached = true;
            } else if meta.path.is_ident("attached") {
                detached = false;
            } else {
                return Err(meta.error(
                    "unknown argument; expected `operation`, `key`, `fingerprint(..)`, `ttl_secs`, `coordinator`, `adapter`, `attached` or `detached`",
                ));
            }
            Ok(())
        });
        parser.parse2(tokens)?;
        let operation = operation.ok_or_else(|| {
            syn::Error::new(
                Span::call_site(),
                "#[idempotent] needs `operation = \"name\"`",
            )
        })?;
        if operation.value().trim().is_empty() || operation.value().contains(':') {
            return Err(syn::Error::new(
                operation.span(),
                "the operation must be non-empty and free of ':'",
            ));
        }
        Ok(Self {
            operation,
            key,
            fingerprint,
            ttl_secs,
            coordinator,
            adapter,
            detached,
        })
    }
}
