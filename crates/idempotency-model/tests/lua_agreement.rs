//! The model's restatement of the store ([`apply`]) against the real scripts: every
//! modelled value is written into a real redis-server, every command the coordinator
//! sends is run on it (the real `lua/*.lua` and `SET … NX GET`), and the value left and
//! the reply must be what the model's step says.

use idempotency_model::store::{ClientId, LEASE_SECS, Op, Reply, Stored, Writer, apply, token};
use idempotency_testkit::RedisServer;
use idempotency_testkit::resp::{Reply as Resp, command_bytes};

const COMPLETE: &str = include_str!("../../idempotency-redis/lua/complete.lua");
const RENEW: &str = include_str!("../../idempotency-redis/lua/renew.lua");
const RELEASE: &str = include_str!("../../idempotency-redis/lua/release.lua");
const TAKEOVER: &str = include_str!("../../idempotency-redis/lua/takeover.lua");
const CLAIM: &str = include_str!("../../idempotency-redis/lua/claim.lua");

const KEY: u8 = 0;
const ME: ClientId = 0;

fn pending(writer: Writer) -> Stored {
    Stored::Pending { writer, skew: 0 }
}

fn completed(exec: ClientId, python: bool, mentions: Option<ClientId>) -> Stored {
    Stored::Completed {
        exec,
        python,
        mentions,
    }
}

/// Every value the model can put under a key.
fn domain() -> Vec<Stored> {
    vec![
        pending(Writer::Ours(ME)),
        pending(Writer::Ours(1)),
        pending(Writer::Python(2)),
        completed(ME, false, Some(1)),
        completed(1, false, Some(ME)),
        completed(1, false, None),
        completed(2, true, None),
        Stored::NotJson,
        Stored::NotRecord,
        Stored::Abandoned,
        Stored::WrongType,
    ]
}

fn bytes(v: Stored) -> Vec<u8> {
    v.bytes(KEY).expect("a string value")
}

fn decode(found: &[u8]) -> Stored {
    domain()
        .into_iter()
        .find(|v| v.bytes(KEY).as_deref() == Some(found))
        .unwrap_or_else(|| panic!("not a modelled value: {}", String::from_utf8_lossy(found)))
}

struct Redis {
    server: RedisServer,
}

impl Redis {
    fn run(&self, args: &[&[u8]]) -> Resp {
        command_bytes(self.server.port(), args).expect("redis reachable")
    }

    fn put(&self, key: &[u8], value: Option<Stored>) {
        self.run(&[b"DEL", key]);
        match value {
            None => {}
            Some(Stored::WrongType) => {
                self.run(&[b"HSET", key, b"f", b"v"]);
            }
            Some(v) => {
                self.run(&[b"SET", key, &bytes(v)]);
            }
        }
    }

    fn read(&self, key: &[u8]) -> Option<Stored> {
        match self.run(&[b"TYPE", key]) {
            Resp::Status(t) if t == "none" => None,
            Resp::Status(t) if t == "hash" => Some(Stored::WrongType),
            _ => match self.run(&[b"GET", key]) {
                Resp::Bulk(Some(b)) => Some(decode(&b)),
                other => panic!("GET: {other:?}"),
            },
        }
    }

    fn eval(&self, script: &str, key: &[u8], args: &[&[u8]]) -> Resp {
        let mut all: Vec<&[u8]> = vec![b"EVAL", script.as_bytes(), b"1", key];
        all.extend_from_slice(args);
        self.run(&all)
    }
}

fn reply(resp: Resp) -> Reply {
    match resp {
        Resp::Nil | Resp::Bulk(None) => Reply::Nil,
        Resp::Bulk(Some(b)) => Reply::Found(decode(&b)),
        // `complete.lua` answers 2 for a write made though our reservation was gone: written.
        Resp::Int(i) => Reply::Done(i == 1 || i == 2),
        Resp::Error(e) if e.contains("WRONGTYPE") => Reply::WrongType,
        other => panic!("unexpected reply {other:?}"),
    }
}

/// Runs `op` for client `ME` on the real server, the way the Redis store sends it.
fn real(redis: &Redis, key: &[u8], op: Op, script_claim: bool) -> Reply {
    let ms = (LEASE_SECS * 1000).to_string();
    let ms = ms.as_bytes();
    let tok = token(ME);
    let tok = tok.as_bytes();
    let mine = bytes(pending(Writer::Ours(ME)));
    let done = bytes(completed(ME, false, Some(1)));
    reply(match op {
        Op::Claim if script_claim => redis.eval(CLAIM, key, &[&mine, ms]),
        Op::Claim => redis.run(&[b"SET", key, &mine, b"NX", b"GET", b"PX", ms]),
        Op::Takeover(seen) => {
            let seen = seen.bytes(KEY).unwrap_or_default();
            redis.eval(TAKEOVER, key, &[&seen, &mine, ms])
        }
        Op::Renew => redis.eval(RENEW, key, &[tok, &mine, ms]),
        Op::Complete => redis.eval(COMPLETE, key, &[tok, &done, ms]),
        Op::Release => redis.eval(RELEASE, key, &[tok]),
        other => panic!("{other:?} is not a script"),
    })
}

#[test]
fn the_model_step_agrees_with_the_lua_scripts_on_every_modelled_value() {
    let redis = Redis {
        server: RedisServer::start(),
    };
    let mut ops = vec![Op::Claim, Op::Renew, Op::Complete, Op::Release];
    ops.extend(
        domain()
            .into_iter()
            .filter(|v| *v != Stored::WrongType)
            .map(Op::Takeover),
    );
    let mut checked = 0;
    let key = b"k0";
    for current in std::iter::once(None).chain(domain().into_iter().map(Some)) {
        for &op in &ops {
            for script_claim in [false, true] {
                if script_claim && op != Op::Claim {
                    continue;
                }
                redis.put(key, current);
                let got = real(&redis, key, op, script_claim);
                let left = redis.read(key);
                let (want_left, want) =
                    apply(KEY, current, op, ME, completed(ME, false, Some(1)), 0, None);
                assert_eq!(
                    (left, got),
                    (want_left, want),
                    "{op:?} over {current:?} (claim script: {script_claim})"
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 150, "{checked}");
}
