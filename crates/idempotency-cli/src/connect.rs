//! Where the CLI connects: `--url`, `REDIS_URL` or `DATABASE_URL`, with the key prefix
//! of `--prefix` or the settings file, within a short timeout. The URL's scheme chooses
//! the backend: Redis (and Valkey) schemes, or `postgres`/`postgresql`.

use std::path::Path;
use std::time::Duration;

use idempotency_coordinator::IdempotencySettings;
use idempotency_core::IdempotencyError;
use idempotency_postgres::{ListenerSource, PostgresStore, StoreConfig};
use idempotency_redis::admin::Admin;
use idempotency_redis::{ConnectOptions, RedisStore, connect_client};
use sqlx::postgres::PgPoolOptions;

use crate::failure::{Failure, chain};

/// The admin API of the store the URL names.
#[derive(Debug)]
pub(crate) enum Backend {
    /// `idempotency_redis::admin`.
    Redis(Admin),
    /// `idempotency_postgres::admin`.
    Postgres(idempotency_postgres::admin::Admin),
}

/// The Postgres URL schemes (libpq's, as sqlx reads them).
const POSTGRES_SCHEMES: [&str; 2] = ["postgres", "postgresql"];

/// Connections the CLI opens to Postgres at most: one for statements, one kept for
/// `LISTEN` (watch).
const POSTGRES_CONNECTIONS: u32 = 2;

/// The connection settings of one run.
#[derive(Debug)]
pub(crate) struct Target<'a> {
    pub(crate) url: Option<&'a str>,
    pub(crate) settings: Option<&'a Path>,
    pub(crate) prefix: Option<&'a str>,
    pub(crate) cluster: bool,
    pub(crate) timeout: Duration,
}

/// `url` with its password replaced by `***`, for messages.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

/// The URL schemes fred reads (`ConnectOptions::builder`; `rediss` needs the `tls`
/// feature of idempotency-redis).
const SCHEMES: [&str; 14] = [
    "redis",
    "rediss",
    "redis-cluster",
    "rediss-cluster",
    "redis-sentinel",
    "rediss-sentinel",
    "redis+unix",
    "valkey",
    "valkeys",
    "valkey-cluster",
    "valkeys-cluster",
    "valkey-sentinel",
    "valkeys-sentinel",
    "valkey+unix",
];

/// Which backend a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Redis,
    Postgres,
}

/// The backend of `url`, or a usage error before anything is tried.
fn check_scheme(url: &str) -> Result<Scheme, Failure> {
    match url.split_once("://") {
        Some((scheme, _)) if SCHEMES.contains(&scheme) => Ok(Scheme::Redis),
        Some((scheme, _)) if POSTGRES_SCHEMES.contains(&scheme) => Ok(Scheme::Postgres),
        _ => Err(Failure::Usage(format!(
            "bad Redis or PostgreSQL URL {}: expected a scheme among {}, {}",
            redact(url),
            SCHEMES.join(", "),
            POSTGRES_SCHEMES.join(", ")
        ))),
    }
}

/// The URL with its scheme made a cluster one when `--cluster` was given.
fn cluster_url(url: &str) -> Result<String, Failure> {
    if let Some(rest) = url.strip_prefix("redis://") {
        Ok(format!("redis-cluster://{rest}"))
    } else if let Some(rest) = url.strip_prefix("rediss://") {
        Ok(format!("rediss-cluster://{rest}"))
    } else if url.starts_with("redis-cluster://") || url.starts_with("rediss-cluster://") {
        Ok(url.to_owned())
    } else {
        Err(Failure::Usage(format!(
            "--cluster needs a redis:// or rediss:// URL, got {}",
            redact(url)
        )))
    }
}

/// The key prefix of the services' settings file (`IdempotencySettings`, JSON).
fn settings_prefix(path: &Path) -> Result<String, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Failure::Usage(format!(
            "cannot read the settings file {}: {e}",
            path.display()
        ))
    })?;
    let settings: IdempotencySettings = serde_json::from_str(&text).map_err(|e| {
        Failure::Usage(format!(
            "the settings file {} is not IdempotencySettings JSON: {e}",
            path.display()
        ))
    })?;
    Ok(settings.key_prefix)
}

impl Target<'_> {
    /// Connects (within the timeout) and returns the admin API on the store.
    pub(crate) async fn connect(&self) -> Result<Backend, Failure> {
        let prefix = match (self.prefix, self.settings) {
            (Some(p), _) => Some(p.to_owned()),
            (None, Some(path)) => Some(settings_prefix(path)?),
            (None, None) => None,
        };
        // Checked before connecting: a prefix without its separator would list and evict
        // another prefix's records.
        if let Some(prefix) = &prefix {
            idempotency_core::validate_key_prefix(prefix)
                .map_err(|e| Failure::Usage(e.to_string()))?;
        }
        let Some(url) = self.url else {
            return Err(Failure::Usage(
                "no URL: pass --url, or set REDIS_URL or DATABASE_URL (the settings file has \
                 no URL field; only its key_prefix is used)"
                    .to_owned(),
            ));
        };
        if check_scheme(url)? == Scheme::Postgres {
            if self.cluster {
                return Err(Failure::Usage(format!(
                    "--cluster needs a redis:// or rediss:// URL, got {}",
                    redact(url)
                )));
            }
            return self.connect_postgres(url, prefix).await;
        }
        let url = if self.cluster {
            cluster_url(url)?
        } else {
            url.to_owned()
        };
        let options = ConnectOptions::default()
            .with_connect_timeout(self.timeout)
            .with_command_timeout(self.timeout)
            .with_reconnect_max_delay(Duration::from_millis(500));
        let connection = connect_client(&url, &options)
            .await
            .map_err(|e| connect_failure(&url, &e))?;
        let mut builder = RedisStore::builder(connection);
        if let Some(prefix) = prefix {
            builder = builder.key_prefix(prefix);
        }
        let store = builder.build().map_err(|e| Failure::Usage(e.to_string()))?;
        Ok(Backend::Redis(Admin::new(store)))
    }

    /// A small pool on a `postgres://` URL (one connection opened now, so a bad address
    /// fails here), the store under the prefix.
    async fn connect_postgres(
        &self,
        url: &str,
        prefix: Option<String>,
    ) -> Result<Backend, Failure> {
        let mut config = StoreConfig::new().with_listener(ListenerSource::Pool);
        if let Some(prefix) = prefix {
            config = config
                .with_key_prefix(&prefix)
                .map_err(|e| Failure::Usage(e.to_string()))?;
        }
        let shown = redact(url);
        let pool = PgPoolOptions::new()
            .max_connections(POSTGRES_CONNECTIONS)
            .acquire_timeout(self.timeout)
            .connect(url)
            .await
            .map_err(|e| match e {
                sqlx::Error::Configuration(_) => Failure::Usage(format!(
                    "bad PostgreSQL URL or connection settings ({shown}): {}",
                    chain(&e)
                )),
                _ => Failure::Connection(format!("cannot connect to {shown}: {}", chain(&e))),
            })?;
        Ok(Backend::Postgres(idempotency_postgres::admin::Admin::new(
            PostgresStore::with_config(pool, config),
        )))
    }
}

fn connect_failure(url: &str, e: &IdempotencyError) -> Failure {
    let shown = redact(url);
    if e.is_storage() {
        Failure::Connection(format!("cannot connect to {shown}: {}", chain(e)))
    } else {
        Failure::Usage(format!(
            "bad Redis URL or connection settings ({shown}): {}",
            chain(e)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::{cluster_url, redact};

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            redact("redis://user:secret@host:6380/0"),
            "redis://user:***@host:6380/0"
        );
        assert_eq!(redact("redis://host:6380"), "redis://host:6380");
    }

    #[test]
    fn cluster_turns_the_scheme_into_a_cluster_one() {
        assert_eq!(
            cluster_url("redis://127.0.0.1:7000").ok().as_deref(),
            Some("redis-cluster://127.0.0.1:7000")
        );
        assert!(cluster_url("redis-sentinel://h:1").is_err());
    }
}
