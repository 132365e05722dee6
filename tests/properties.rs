//! Property tests of the id sequencer, the key encoding and the record
//! encoding: ids only grow, keys sort like the numbers they encode, records
//! survive a round trip, and decoding arbitrary bytes returns an error
//! instead of panicking.

use std::collections::HashSet;

use aura::ids::{id_ms, now_ms, Sequencer, COUNTER_BITS, LEASE_SPAN};
use aura::store::records::{
    decode, encode, nonce_key, pair_key, split_pair_key, Category, Channel, Layout, Message, NonceRecord, PostPolicy,
    RecordError, Role, Session, User, FORMAT_VERSION,
};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

/// Leases a sequencer may resume from: every id issued so far is below
/// 2^62, which the millisecond clock reaches in about 2 million years.
fn lease() -> impl Strategy<Value = u64> {
    prop_oneof![0..(1u64 << 62), Just(0), Just(now_ms() << COUNTER_BITS)]
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Member), Just(Role::Moderator), Just(Role::Admin)]
}

fn message() -> impl Strategy<Value = Message> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        ".{0,40}",
        any::<String>(),
        any::<u64>(),
        option::of(any::<u64>()),
        option::of(".{0,64}"),
        any::<bool>(),
    )
        .prop_map(
            |(id, rev, channel, author_id, author_name, content, ts, edited_ts, nonce, deleted)| Message {
                id,
                rev,
                channel,
                author_id,
                author_name,
                content,
                ts,
                edited_ts,
                nonce,
                deleted,
            },
        )
}

fn user() -> impl Strategy<Value = User> {
    (
        any::<u64>(),
        "[A-Za-z0-9_.-]{2,32}",
        ".{0,100}",
        role(),
        any::<u64>(),
        ".{0,32}",
        option::of(any::<u64>()),
        option::of(any::<u64>()),
        (any::<bool>(), any::<bool>()),
    )
        .prop_map(
            |(id, name, password_hash, role, created_ms, tier, tier_expires_ms, muted_until_ms, (disabled, invisible))| User {
                id,
                name,
                password_hash,
                role,
                created_ms,
                tier,
                tier_expires_ms,
                muted_until_ms,
                disabled,
                invisible,
            },
        )
}

fn channel() -> impl Strategy<Value = Channel> {
    (any::<u64>(), ".{0,64}", ".{0,256}", any::<bool>(), ".{0,32}", any::<bool>()).prop_map(
        |(id, name, topic, admins_only, min_tier, hidden)| Channel {
            id,
            name,
            topic,
            post: if admins_only { PostPolicy::Admins } else { PostPolicy::Everyone },
            min_tier,
            hidden,
        },
    )
}

fn layout() -> impl Strategy<Value = Layout> {
    let category = (any::<u64>(), ".{0,64}", vec(channel(), 0..6)).prop_map(|(id, name, channels)| Category {
        id,
        name,
        channels,
    });
    (any::<u64>(), vec(category, 0..5)).prop_map(|(version, categories)| Layout { version, categories })
}

proptest! {
    #[test]
    fn sequencer_ids_strictly_increase(start in lease(), count in 1usize..2000) {
        let sequencer = Sequencer::resume(start);
        let mut previous = start;
        for index in 0..count {
            let id = sequencer.next();
            prop_assert!(id > previous, "id {index} ({id}) is above the previous one ({previous})");
            prop_assert_eq!(sequencer.last(), id, "last() returns the id just issued");
            previous = id;
        }
    }

    #[test]
    fn sequencer_ids_carry_the_clock(start in 0..(now_ms() << COUNTER_BITS)) {
        let before = now_ms();
        let id = Sequencer::resume(start).next();
        prop_assert!(id_ms(id) >= before, "an id after a past lease carries at least the current millisecond");
    }

    #[test]
    fn renewed_lease_covers_issued_ids(start in lease(), count in 0usize..5000) {
        let sequencer = Sequencer::resume(start);
        sequencer.lease_persisted(start + LEASE_SPAN);
        for _ in 0..count {
            sequencer.next();
            if let Some(lease) = sequencer.lease_to_renew() {
                prop_assert!(lease > sequencer.last(), "a renewed lease ({lease}) is above every issued id");
                sequencer.lease_persisted(lease);
            }
        }
    }

    #[test]
    fn pair_keys_sort_numerically(a in any::<u64>(), b in any::<u64>(), c in any::<u64>(), d in any::<u64>()) {
        prop_assert_eq!(pair_key(a, b).cmp(&pair_key(c, d)), (a, b).cmp(&(c, d)));
    }

    #[test]
    fn pair_key_round_trips(a in any::<u64>(), b in any::<u64>()) {
        prop_assert_eq!(split_pair_key(&pair_key(a, b)), Some((a, b)));
    }

    #[test]
    fn split_pair_key_accepts_only_16_bytes(bytes in vec(any::<u8>(), 0..40)) {
        match split_pair_key(&bytes) {
            Some((first, second)) => {
                prop_assert_eq!(bytes.len(), 16, "only a 16-byte key splits");
                prop_assert_eq!(pair_key(first, second).to_vec(), bytes, "a split key re-encodes to itself");
            }
            None => prop_assert_ne!(bytes.len(), 16, "every 16-byte key splits"),
        }
    }

    #[test]
    fn nonce_keys_group_by_user(u in any::<u64>(), v in any::<u64>(), m in ".{0,64}", n in ".{0,64}") {
        let (first, second) = (nonce_key(u, &m), nonce_key(v, &n));
        prop_assert!(first.starts_with(&u.to_be_bytes()), "a nonce key starts with its user id");
        if u != v {
            prop_assert_eq!(first.cmp(&second), u.cmp(&v), "keys of different users sort by user id");
        } else {
            prop_assert_eq!(first.cmp(&second), m.as_bytes().cmp(n.as_bytes()), "one user's keys sort by nonce bytes");
        }
    }

    #[test]
    fn message_record_round_trips(record in message()) {
        prop_assert_eq!(decode::<Message>(&encode(&record)).unwrap(), record);
    }

    #[test]
    fn user_record_round_trips(record in user()) {
        prop_assert_eq!(decode::<User>(&encode(&record)).unwrap(), record);
    }

    #[test]
    fn small_records_round_trip(user in any::<u64>(), times in any::<(u64, u64)>(), ids in any::<(u64, u64)>()) {
        let session = Session { user, created_ms: times.0, expires_ms: times.1 };
        prop_assert_eq!(decode::<Session>(&encode(&session)).unwrap(), session);
        let nonce = NonceRecord { channel: ids.0, message: ids.1, created_ms: times.0 };
        prop_assert_eq!(decode::<NonceRecord>(&encode(&nonce)).unwrap(), nonce);
    }

    #[test]
    fn layout_record_round_trips(record in layout()) {
        prop_assert_eq!(decode::<Layout>(&encode(&record)).unwrap(), record);
    }

    #[test]
    fn truncated_record_is_rejected(record in message(), cut in any::<prop::sample::Index>()) {
        let bytes = encode(&record);
        let end = cut.index(bytes.len());
        prop_assert!(decode::<Message>(&bytes[..end]).is_err(), "a record cut to {end} of {} bytes is rejected", bytes.len());
    }

    #[test]
    fn other_version_is_rejected(record in message(), version in any::<u8>()) {
        prop_assume!(version != FORMAT_VERSION);
        let mut bytes = encode(&record);
        bytes[0] = version;
        prop_assert!(matches!(decode::<Message>(&bytes), Err(RecordError::Version(found)) if found == version));
    }

    #[test]
    fn decode_of_any_bytes_never_panics(tail in vec(any::<u8>(), 0..512), versioned in any::<bool>()) {
        let mut bytes = Vec::with_capacity(tail.len() + 1);
        if versioned {
            bytes.push(FORMAT_VERSION);
        }
        bytes.extend_from_slice(&tail);
        // Each call returns Ok or Err; a panic fails the property.
        let _ = decode::<Message>(&bytes);
        let _ = decode::<User>(&bytes);
        let _ = decode::<Session>(&bytes);
        let _ = decode::<NonceRecord>(&bytes);
        let _ = decode::<Layout>(&bytes);
        let _ = decode::<String>(&bytes);
    }
}

#[test]
fn sequencer_ids_unique_across_threads() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 50_000;
    let sequencer = Sequencer::resume(0);
    let batches: Vec<Vec<u64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|_| scope.spawn(|| (0..PER_THREAD).map(|_| sequencer.next()).collect::<Vec<u64>>()))
            .collect();
        handles.into_iter().map(|handle| handle.join().unwrap()).collect()
    });
    for (thread, batch) in batches.iter().enumerate() {
        assert!(batch.windows(2).all(|pair| pair[0] < pair[1]), "thread {thread} sees increasing ids");
    }
    let unique: HashSet<u64> = batches.iter().flatten().copied().collect();
    assert_eq!(unique.len(), THREADS * PER_THREAD, "no id is issued twice across threads");
}
