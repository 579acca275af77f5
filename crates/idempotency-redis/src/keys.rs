//! Redis key layout: `{prefix}{operation}:{idempotency_key}`.

use std::collections::BTreeMap;

use idempotency_core::RecordId;

/// Builds the Redis key of a record: the prefix, then `operation:key` (the identity's
/// text, joined by [`KEY_SEPARATOR`](idempotency_core::constants::KEY_SEPARATOR), which
/// neither part may contain, so two identities never share a key).
pub(crate) fn record_key(prefix: &str, id: &RecordId) -> String {
    let mut s = String::with_capacity(prefix.len() + id.as_str().len());
    s.push_str(prefix);
    s.push_str(id.as_str());
    s
}

/// Groups item indexes by the cluster hash slot of their Redis key, so each group can go
/// to one node in one command without CROSSSLOT errors.
pub(crate) fn group_by_slot(keys: &[String]) -> BTreeMap<u16, Vec<usize>> {
    let mut groups: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
    for (i, k) in keys.iter().enumerate() {
        groups
            .entry(fred::util::redis_keyslot(k.as_bytes()))
            .or_default()
            .push(i);
    }
    groups
}

#[cfg(test)]
fn id(operation: &str, key: &str) -> RecordId {
    RecordId::new(operation, key).expect("valid identifiers")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_python_format() {
        assert_eq!(
            record_key("idempotency:", &id("user.create", "k1")),
            "idempotency:user.create:k1"
        );
        assert_eq!(
            record_key("svc:idem:", &id("user.create", "rec-prefix")),
            "svc:idem:user.create:rec-prefix"
        );
    }

    #[test]
    fn hash_tags_group_keys_into_one_slot() {
        let keys = vec![
            "idempotency:op:{a}1".to_owned(),
            "idempotency:op:{a}2".to_owned(),
            "x".to_owned(),
        ];
        let groups = group_by_slot(&keys);
        assert_eq!(groups.len(), 2);
        assert!(groups.values().any(|g| g == &vec![0, 1]));
    }
}

#[cfg(test)]
mod hash_tag_tests {
    use super::{id, record_key};

    #[test]
    fn a_tag_in_the_key_decides_the_slot_for_every_operation() {
        let a = record_key("idempotency:", &id("user.create", "{tenant-7}abc"));
        let b = record_key("idempotency:", &id("order.pay", "{tenant-7}xyz"));
        assert_eq!(
            fred::util::redis_keyslot(a.as_bytes()),
            fred::util::redis_keyslot(b.as_bytes())
        );
        assert_eq!(
            fred::util::redis_keyslot(a.as_bytes()),
            fred::util::redis_keyslot(b"tenant-7")
        );
    }

    #[test]
    fn without_a_tag_the_whole_key_is_hashed() {
        let a = record_key("idempotency:", &id("user.create", "k1"));
        assert_eq!(
            fred::util::redis_keyslot(a.as_bytes()),
            fred::util::redis_keyslot(b"idempotency:user.create:k1")
        );
        // A tag in the prefix pins every record of the prefix to one slot.
        let p1 = record_key("{svc}:idem:", &id("a", "k1"));
        let p2 = record_key("{svc}:idem:", &id("b", "k2"));
        assert_eq!(
            fred::util::redis_keyslot(p1.as_bytes()),
            fred::util::redis_keyslot(p2.as_bytes())
        );
    }
}
