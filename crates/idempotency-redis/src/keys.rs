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

/// Per cluster hash slot, a short tag (a decimal number) whose `{tag}` puts any key in
/// that slot: how a key's fence counter lands in its record's slot whatever the record
/// key holds (braces included), so one script reads both on a cluster.
#[derive(Debug)]
pub(crate) struct SlotTags(Vec<u32>);

impl SlotTags {
    /// The table, by trying numbers in turn until every slot has one (about 160,000
    /// CRC16s of short strings: a few milliseconds, once per store).
    pub(crate) fn new() -> Self {
        const SLOTS: usize = 16_384;
        let mut tags = vec![u32::MAX; SLOTS];
        let mut left = SLOTS;
        let mut n: u32 = 0;
        while left > 0 {
            let slot = usize::from(fred::util::redis_keyslot(n.to_string().as_bytes()));
            if tags[slot] == u32::MAX {
                tags[slot] = n;
                left -= 1;
            }
            n += 1;
        }
        Self(tags)
    }

    /// The key of the fence counter of `record_key`: `{tag}fence:` then the record key,
    /// in the record key's slot. It starts with `{`, so a scan of the prefix never lists
    /// it as a record.
    pub(crate) fn fence_key(&self, record_key: &str) -> String {
        let slot = usize::from(fred::util::redis_keyslot(record_key.as_bytes()));
        let tag = self.0.get(slot).copied().unwrap_or_default();
        format!("{{{tag}}}fence:{record_key}")
    }
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
    fn a_fence_counter_lands_in_its_record_keys_slot_whatever_the_key_holds() {
        let tags = SlotTags::new();
        for key in ["a", "{tenant-7}abc", "a}b", "{}x", "{x", "}{y}z", "k\u{e9}"] {
            let record = record_key("idempotency:", &id("op", key));
            let fence = tags.fence_key(&record);
            assert_eq!(
                fred::util::redis_keyslot(fence.as_bytes()),
                fred::util::redis_keyslot(record.as_bytes()),
                "{record} and {fence}"
            );
            assert!(fence.starts_with('{') && fence.ends_with(&record));
        }
        // Every slot has a tag, and each tag hashes to its own slot.
        for (slot, tag) in tags.0.iter().enumerate() {
            assert_eq!(
                usize::from(fred::util::redis_keyslot(tag.to_string().as_bytes())),
                slot
            );
        }
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
