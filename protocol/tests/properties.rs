//! Property tests: round trips of the canonical encoding, the tamper
//! evidence of signatures, and no panic on arbitrary bytes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use proptest::prelude::*;
use rigmesh_protocol::kind::Kind;
use rigmesh_protocol::samples;
use rigmesh_protocol::wire::{self, WireMessage};
use rigmesh_protocol::{
    Alert, Approval, Audience, Clock, Credits, Deposit, GpuUsage, Id, Keypair, LeaseTermination,
    Offer, Severity, Signed, TerminationReason, UnixMillis, UsageAttestation, Withdrawal,
    PROTOCOL_VERSION,
};

fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[a-zA-Z0-9 ._-]{{0,{max}}}")).unwrap()
}

fn offer() -> impl Strategy<Value = Offer> {
    (
        any::<u64>(),
        text(64),
        any::<u64>(),
        any::<u16>(),
        any::<i64>(),
        (any::<u32>(), any::<u32>()),
        text(32),
        any::<[u8; 32]>(),
        (any::<u64>(), any::<u64>()),
    )
        .prop_map(
            |(sequence, gpu_model, mem, count, price, (min_h, max_h), region, fp, (c, e))| Offer {
                version: PROTOCOL_VERSION,
                supplier: samples::supplier().public(),
                sequence,
                gpu_model,
                gpu_memory_mib: mem,
                gpu_count: count,
                price_per_gpu_hour: Credits::from_units(price),
                min_hours: min_h,
                max_hours: max_h,
                region,
                hardware_fingerprint: Id(fp),
                created_at: UnixMillis(c),
                expires_at: UnixMillis(e),
            },
        )
}

fn attestation() -> impl Strategy<Value = UsageAttestation> {
    let gpu = (
        any::<u16>(),
        any::<u64>(),
        any::<u16>(),
        any::<u16>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|(i, b, m, p, mem, e)| GpuUsage {
            gpu_index: i,
            billable_ms: b,
            mean_util_bp: m,
            peak_util_bp: p,
            peak_memory_mib: mem,
            energy_mj: e,
        });
    (
        any::<[u8; 32]>(),
        any::<u64>(),
        any::<[u8; 32]>(),
        (any::<u64>(), any::<u64>(), any::<u64>()),
        proptest::collection::vec(gpu, 0..64),
        any::<u64>(),
    )
        .prop_map(
            |(lease, seq, prev, (s, e, c), gpus, total)| UsageAttestation {
                version: PROTOCOL_VERSION,
                lease: Id(lease),
                supplier: samples::supplier().public(),
                customer: samples::customer().public(),
                seq,
                prev: Id(prev),
                window_start: UnixMillis(s),
                window_end: UnixMillis(e),
                gpus,
                billable_gpu_ms: total,
                created_at: UnixMillis(c),
            },
        )
}

fn alert() -> impl Strategy<Value = Alert> {
    (
        prop_oneof![
            Just(Severity::Info),
            Just(Severity::Warning),
            Just(Severity::Critical)
        ],
        prop_oneof![
            Just(Audience::Supplier),
            Just(Audience::Customer),
            Just(Audience::Operators)
        ],
        text(64),
        proptest::option::of(any::<[u8; 32]>()),
        proptest::option::of(any::<[u8; 32]>()),
        text(1000),
        any::<u64>(),
    )
        .prop_map(
            |(severity, audience, rule, about, subject, message, c)| Alert {
                version: PROTOCOL_VERSION,
                issuer: samples::supplier().public(),
                severity,
                audience,
                rule,
                about: about.map(rigmesh_protocol::PublicKey),
                subject: subject.map(Id),
                message,
                created_at: UnixMillis(c),
            },
        )
}

fn deposit() -> impl Strategy<Value = Deposit> {
    (
        any::<u64>(),
        any::<[u8; 32]>(),
        any::<i64>(),
        text(128),
        any::<u64>(),
    )
        .prop_map(|(epoch, account, amount, reference, c)| Deposit {
            version: PROTOCOL_VERSION,
            epoch,
            admin: samples::admin().public(),
            account: rigmesh_protocol::PublicKey(account),
            amount: Credits::from_units(amount),
            reference,
            created_at: UnixMillis(c),
        })
}

fn approval() -> impl Strategy<Value = Approval> {
    (
        any::<u64>(),
        prop_oneof![Just(Kind::Deposit), Just(Kind::Withdrawal)],
        any::<[u8; 32]>(),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(|(epoch, subject_kind, subject, approve, c)| Approval {
            version: PROTOCOL_VERSION,
            epoch,
            admin: samples::second_admin().public(),
            subject_kind,
            subject: Id(subject),
            approve,
            created_at: UnixMillis(c),
        })
}

fn withdrawal() -> impl Strategy<Value = Withdrawal> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<i64>(),
        text(128),
        (any::<u64>(), any::<u64>()),
    )
        .prop_map(|(seq, epoch, amount, destination, (c, e))| Withdrawal {
            version: PROTOCOL_VERSION,
            account: samples::customer().public(),
            seq,
            epoch,
            amount: Credits::from_units(amount),
            destination,
            created_at: UnixMillis(c),
            expires_at: UnixMillis(e),
        })
}

fn termination() -> impl Strategy<Value = LeaseTermination> {
    (
        any::<[u8; 32]>(),
        any::<[u8; 32]>(),
        prop_oneof![
            Just(TerminationReason::BudgetCap),
            Just(TerminationReason::CustomerRequest),
            Just(TerminationReason::SupplierMisbehaviour),
            Just(TerminationReason::Other)
        ],
        text(256),
        any::<u64>(),
    )
        .prop_map(|(lease, supplier, reason, detail, c)| LeaseTermination {
            version: PROTOCOL_VERSION,
            lease: Id(lease),
            customer: samples::customer().public(),
            supplier: rigmesh_protocol::PublicKey(supplier),
            reason,
            detail,
            created_at: UnixMillis(c),
        })
}

fn round_trip<T: rigmesh_protocol::Message>(body: T, key: &Keypair) {
    let signed = Signed::sign(body, key).unwrap();
    let bytes = signed.to_bytes().unwrap();
    let back = Signed::<T>::from_bytes(&bytes).unwrap();
    assert_eq!(back, signed);
    assert_eq!(back.to_bytes().unwrap(), bytes);
    assert_eq!(back.id().unwrap(), signed.id().unwrap());
    back.verify_signatures().unwrap();
    let json = serde_json::to_string(&signed).unwrap();
    assert_eq!(serde_json::from_str::<Signed<T>>(&json).unwrap(), signed);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn offers_round_trip(body in offer()) {
        round_trip(body, &samples::supplier());
    }

    #[test]
    fn attestations_round_trip(body in attestation()) {
        round_trip(body, &samples::supplier());
    }

    #[test]
    fn alerts_round_trip(body in alert()) {
        round_trip(body, &samples::supplier());
    }

    #[test]
    fn approvals_round_trip(body in approval()) {
        round_trip(body, &samples::second_admin());
    }

    #[test]
    fn deposits_round_trip(body in deposit()) {
        round_trip(body, &samples::admin());
    }

    #[test]
    fn withdrawals_round_trip(body in withdrawal()) {
        round_trip(body, &samples::customer());
    }

    #[test]
    fn lease_terminations_round_trip(body in termination()) {
        round_trip(body, &samples::customer());
    }

    #[test]
    fn credits_round_trip_through_decimal_and_text(units in any::<i64>()) {
        let c = Credits::from_units(units);
        prop_assert_eq!(Credits::new(c.to_decimal()).unwrap(), c);
        prop_assert_eq!(c.to_string().parse::<Credits>().unwrap(), c);
    }

    /// Any single-bit change anywhere in a valid signed message or
    /// certificate makes it fail to decode or fail verification.
    #[test]
    fn any_single_bit_flip_is_caught(kind_index in 0usize..Kind::ALL.len(), bit in any::<prop::sample::Index>()) {
        let kind = Kind::ALL[kind_index];
        let message = samples::sample(kind).unwrap();
        let mut bytes = message.to_bytes().unwrap();
        let bit = bit.index(bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        let set = samples::coordinator_set().unwrap();
        // Checked at the sample's own time, where the original is valid.
        let clock = Clock::at(samples::T0.plus_ms(120_000));
        message.verify(&clock, Some(&set)).unwrap();
        let outcome = WireMessage::decode(kind, &bytes).and_then(|m| m.verify(&clock, Some(&set)));
        prop_assert!(outcome.is_err(), "{} with bit {} flipped still verifies", kind, bit);
    }

    /// Arbitrary bytes never panic any decoder, and whatever decodes
    /// re-encodes to the same bytes.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        for kind in Kind::ALL {
            wire::fuzz_decode(kind, &bytes);
        }
    }

    /// Mutations of valid messages (the interesting neighbourhood for a
    /// decoder) never panic either.
    #[test]
    fn mutated_messages_never_panic(kind_index in 0usize..Kind::ALL.len(), cut in any::<prop::sample::Index>(), junk in proptest::collection::vec(any::<u8>(), 0..16)) {
        let kind = Kind::ALL[kind_index];
        let mut bytes = samples::sample(kind).unwrap().to_bytes().unwrap();
        let at = cut.index(bytes.len());
        bytes.splice(at..at, junk);
        for kind in Kind::ALL {
            wire::fuzz_decode(kind, &bytes);
        }
    }
}

/// The exhaustive form of the bit-flip property over every sample: each of
/// their bits, flipped alone, is caught.
#[test]
fn every_single_bit_flip_of_every_sample_is_caught() {
    let set = samples::coordinator_set().unwrap();
    let clock = Clock::at(samples::T0.plus_ms(120_000));
    for kind in Kind::ALL {
        let original = samples::sample(kind).unwrap().to_bytes().unwrap();
        for bit in 0..original.len() * 8 {
            let mut bytes = original.clone();
            bytes[bit / 8] ^= 1 << (bit % 8);
            let outcome =
                WireMessage::decode(kind, &bytes).and_then(|m| m.verify(&clock, Some(&set)));
            assert!(
                outcome.is_err(),
                "{kind} with bit {bit} flipped still verifies"
            );
        }
    }
}
