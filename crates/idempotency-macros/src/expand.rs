//! Code generation.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::{FnArg, Ident, ItemFn, Pat};

use crate::attr::Args;

fn param_names(function: &ItemFn) -> Vec<Ident> {
    function
        .sig
        .inputs
        .iter()
        .filter_map(|arg| match arg {
            FnArg::Typed(t) => match &*t.pat {
                Pat::Ident(p) => Some(p.ident.clone()),
                _ => None,
            },
            FnArg::Receiver(_) => None,
        })
        .collect()
}

pub(crate) fn expand(args: &Args, function: ItemFn) -> syn::Result<TokenStream> {
    if function.sig.asyncness.is_none() {
        return Err(syn::Error::new_spanned(
            function.sig.fn_token,
            "#[idempotent] works on `async fn` only",
        ));
    }
    let params = param_names(&function);
    let key = args
        .key
        .clone()
        .unwrap_or_else(|| format_ident!("idempotency_key"));
    if !params.contains(&key) {
        let span = args
            .key
            .as_ref()
            .map_or_else(|| function.sig.ident.span(), Ident::span);
        return Err(syn::Error::new(
            span,
            format!(
                "no parameter `{key}` holds the idempotency key; add one (`Option<String>`) or name it with `key = …`"
            ),
        ));
    }
    for name in &args.fingerprint {
        if !params.contains(name) {
            return Err(syn::Error::new(
                name.span(),
                format!("`{name}` is not a parameter of this function"),
            ));
        }
    }
    let coordinator = match &args.coordinator {
        Some(expr) => quote!(#expr),
        None => {
            if !function
                .sig
                .inputs
                .iter()
                .any(|a| matches!(a, FnArg::Receiver(_)))
            {
                return Err(syn::Error::new_spanned(
                    &function.sig.ident,
                    "a free function needs `coordinator = …` (the default is `self.idempotency_coordinator`)",
                ));
            }
            quote!(self.idempotency_coordinator)
        }
    };
    let operation = &args.operation;
    let fingerprint = if args.fingerprint.is_empty() {
        quote!(::core::option::Option::None)
    } else {
        let names = args.fingerprint.iter().map(Ident::to_string);
        let idents = &args.fingerprint;
        quote! {
            ::idempotency_coordinator::__private::Fingerprint::new()
                #( .field(#names, &#idents)? )*
                .finish()?
        }
    };
    let ttl = args
        .ttl_secs
        .as_ref()
        .map(|t| quote_spanned!(t.span()=> .ttl(::std::time::Duration::from_secs(#t))));
    let adapter = match &args.adapter {
        Some(a) => quote!(#a),
        None => quote!(::idempotency_coordinator::SerdeAdapter),
    };
    let body_tokens = &function.block.stmts;
    let run = if args.detached {
        // A spawned task: it finishes (and stores its result) even when the caller's
        // future is dropped. The body then owns what it uses (`'static + Send`).
        quote!(.run_detached(move || async move { #(#body_tokens)* }))
    } else {
        quote!(.run(|| async { #(#body_tokens)* }))
    };
    let ItemFn {
        attrs,
        vis,
        sig,
        block: _,
    } = function;
    Ok(quote! {
        #(#attrs)*
        #vis #sig {
            let __idempotency_key: ::core::option::Option<::std::string::String> =
                ::idempotency_coordinator::__private::key_of(#key.as_deref());
            let __idempotency_fingerprint: ::core::option::Option<::std::string::String> = #fingerprint;
            (#coordinator)
                .call(#operation, __idempotency_key.as_deref())
                .maybe_fingerprint(__idempotency_fingerprint)
                #ttl
                .adapter(#adapter)
                #run
                .await
        }
    })
}
