//! The model's restatement of the store ([`apply`]) against the real scripts: every
//! modelled value (stored errors included, a finished record no client reads and the
//! stored error marking a result not storable) is written into a real redis-server, every
//! command the coordinator sends is run on it (the real `lua/*.lua` and `SET … NX GET`),
//! and the value left and the reply must be what the model's step says. Fenced scripts'
//! integers are compared exactly (1 held, 2 vacated, 0 lost), and the Redis store's
//! reading of them is core's [`Fence::from_script_reply`], which the model uses too.

use idempotency_core::Fence;
use idempotency_model::store::{
    ClientId, Finish, LEASE_SECS, Op, Reply, Stored, Writer, apply, script_reply, token,
};
use idempotency_testkit::RedisServer;
use idempotency_testkit::resp::{Reply as Resp, command_bytes};

const COMPLETE: &str = include_str!("../../../idempotency-redis/lua/complete.lua");
const RENEW: &str = include_str!("../../../idempotency-redis/lua/renew.lua");
const RELEASE: &str = include_str!("../../../idempotency-redis/lua/release.lua");
const TAKEOVER: &str = include_str!("../../../idempotency-redis/lua/takeover.lua");
const CLAIM: &str = include_str!("../../../idempotency-redis/lua/claim.lua");
const DELETE_IF_EQUAL: &str = include_str!("../../../idempotency-redis/lua/delete_if_equal.lua");

const KEY: u8 = 0;
const ME: ClientId = 0;

fn pending(writer: Writer) -> Stored {
    Stored::Pending { writer, skew: 0 }
}

fn completed(exec: ClientId, finish: Finish, python: bool, mentions: Option<ClientId>) -> Stored {
    Stored::Completed {
        exec,
        finish,
        python,
        mentions,
    }
}

/// Our completed record and our stored error: what `complete.lua` writes for `ME`.
fn ours(finish: Finish) -> Stored {
    completed(ME, finish, false, Some(1))
}

/// Every value the model can put under a key.
fn domain() -> Vec<Stored> {
    vec![
        pending(Writer::Ours(ME)),
        pending(Writer::Ours(1)),
        pending(Writer::Python(2)),
        ours(Finish::Value),
        ours(Finish::Error),
        completed(1, Finish::Value, false, Some(ME)),
        completed(1, Finish::Value, false, None),
        completed(1, Finish::Error, false, Some(ME)),
        completed(1, Finish::Error, false, None),
        completed(2, Finish::Value, true, None),
        // A finished record no client reads (what the unstorable-result defect writes),
        // and the stored error the coordinator writes instead.
        ours(Finish::Unstorable),
        completed(ME, Finish::NotStorable, false, None),
        completed(1, Finish::Unstorable, false, Some(ME)),
        completed(1, Finish::NotStorable, false, None),
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

    /// Writes `value` as the model means it: records with no TTL (the abandoned one must
    /// have none: `takeover.lua` leaves a key Redis still expires alone).
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

/// A real reply, with fenced scripts' integers kept exact.
#[derive(Debug, PartialEq, Eq)]
enum Real {
    Nil,
    Found(Stored),
    Int(i64),
    WrongType,
}

fn real_reply(resp: Resp) -> Real {
    match resp {
        Resp::Nil | Resp::Bulk(None) => Real::Nil,
        Resp::Bulk(Some(b)) => Real::Found(decode(&b)),
        Resp::Int(i) => Real::Int(i),
        Resp::Error(e) if e.contains("WRONGTYPE") => Real::WrongType,
        other => panic!("unexpected reply {other:?}"),
    }
}

/// What the model's reply must look like on the wire.
fn expected(reply: Reply) -> Real {
    match reply {
        Reply::Nil => Real::Nil,
        Reply::Found(v) => Real::Found(v),
        Reply::Fenced(fence) => Real::Int(script_reply(fence)),
        Reply::Done(done) => Real::Int(i64::from(done)),
        Reply::WrongType => Real::WrongType,
        Reply::Refused => panic!("the model's store step never refuses"),
    }
}

/// Runs `op` for client `ME` on the real server, the way the Redis store sends it.
fn real(redis: &Redis, key: &[u8], op: Op, script_claim: bool) -> Resp {
    let ms = (LEASE_SECS * 1000).to_string();
    let ms = ms.as_bytes();
    let tok = token(ME);
    let tok = tok.as_bytes();
    let mine = bytes(pending(Writer::Ours(ME)));
    match op {
        Op::Claim if script_claim => redis.eval(CLAIM, key, &[&mine, ms]),
        Op::Claim => redis.run(&[b"SET", key, &mine, b"NX", b"GET", b"PX", ms]),
        Op::Takeover(seen) => {
            // The Redis store's fourth argument: '1' when what it found is an abandoned
            // reservation (taken over only if Redis never expires the key).
            let abandoned: &[u8] = if seen == Stored::Abandoned {
                b"1"
            } else {
                b"0"
            };
            let seen = seen.bytes(KEY).unwrap_or_default();
            redis.eval(TAKEOVER, key, &[&seen, &mine, ms, abandoned])
        }
        Op::Renew => redis.eval(RENEW, key, &[tok, &mine, ms]),
        Op::Complete(done) => redis.eval(COMPLETE, key, &[tok, &bytes(done), ms]),
        Op::Release => redis.eval(RELEASE, key, &[tok]),
        Op::DeleteIfEqual(seen) => redis.eval(DELETE_IF_EQUAL, key, &[&bytes(seen)]),
        other => panic!("{other:?} is not a script"),
    }
}

#[test]
fn the_model_step_agrees_with_the_lua_scripts_on_every_modelled_value() {
    let redis = Redis {
        server: RedisServer::start(),
    };
    let mut ops = vec![
        Op::Claim,
        Op::Renew,
        Op::Complete(ours(Finish::Value)),
        Op::Complete(ours(Finish::Error)),
        Op::Complete(completed(ME, Finish::NotStorable, false, None)),
        Op::Complete(ours(Finish::Unstorable)),
        Op::Release,
    ];
    let strings = || domain().into_iter().filter(|v| *v != Stored::WrongType);
    ops.extend(strings().map(Op::Takeover));
    ops.extend(strings().map(Op::DeleteIfEqual));
    let mut checked = 0;
    let mut fences = [0; 3];
    let key = b"k0";
    for current in std::iter::once(None).chain(domain().into_iter().map(Some)) {
        for &op in &ops {
            for script_claim in [false, true] {
                if script_claim && op != Op::Claim {
                    continue;
                }
                redis.put(key, current);
                let resp = real(&redis, key, op, script_claim);
                let got = real_reply(resp);
                let left = redis.read(key);
                let (want_left, want) = apply(KEY, current, op, ME, 0, None);
                if let Reply::Fenced(fence) = want {
                    // The Redis store reads the integer with core's function, as the model.
                    let Real::Int(i) = got else {
                        panic!("{op:?} over {current:?}: {got:?}")
                    };
                    assert_eq!(Fence::from_script_reply(Some(i)), fence);
                    fences[usize::try_from(script_reply(fence)).expect("0..=2")] += 1;
                }
                assert_eq!(
                    (left, got),
                    (want_left, expected(want)),
                    "{op:?} over {current:?} (claim script: {script_claim})"
                );
                checked += 1;
            }
        }
    }
    // Every answer of the fenced scripts was seen (0 lost, 1 held, 2 vacated).
    assert!(fences.iter().all(|n| *n > 0), "{fences:?}");
    assert!(checked > 400, "{checked}");
}

#[test]
fn an_abandoned_reservation_that_redis_still_expires_is_not_taken_over() {
    let redis = Redis {
        server: RedisServer::start(),
    };
    let key = b"k0";
    let abandoned = bytes(Stored::Abandoned);
    let mine = bytes(pending(Writer::Ours(ME)));
    redis.run(&[b"SET", key, &abandoned, b"PX", b"60000"]);
    let got = real_reply(redis.eval(TAKEOVER, key, &[&abandoned, &mine, b"3000", b"1"]));
    assert_eq!(got, Real::Found(Stored::Abandoned));
    assert_eq!(redis.read(key), Some(Stored::Abandoned));
}
