//! One test per way a message can be invalid: each is refused with its own
//! error, naming the kind and the field.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use rigmesh_protocol::kind::Kind;
use rigmesh_protocol::samples::{self, T0};
use rigmesh_protocol::{
    Audience, Certificate, Clock, CoordinatorSet, Credits, Error, Id, Keypair, Message, Signed,
};

/// The sample, changed by `f` and signed again by `key`, so only the change
/// is wrong.
fn altered<T: Message>(signed: Signed<T>, key: &Keypair, f: impl FnOnce(&mut T)) -> Signed<T> {
    let mut body = signed.body;
    f(&mut body);
    let bytes = rigmesh_protocol::codec::encode(T::KIND, &body).unwrap();
    Signed {
        signature: key.sign(T::KIND, &bytes),
        signer: key.public(),
        body,
    }
}

fn clock() -> Clock {
    Clock::at(T0.plus_ms(120_000))
}

fn field_error<T: Message>(signed: &Signed<T>) -> (Kind, &'static str) {
    match signed.verify(&clock()) {
        Err(Error::Field { kind, field, .. }) => (kind, field),
        other => panic!("expected a field error, got {other:?}"),
    }
}

#[test]
fn samples_are_valid() {
    let set = samples::coordinator_set().unwrap();
    for kind in Kind::ALL {
        samples::sample(kind)
            .unwrap()
            .verify(&clock(), Some(&set))
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
    }
}

#[test]
fn offer_field_rules() {
    let s = samples::supplier();
    type Change = Box<dyn Fn(&mut rigmesh_protocol::Offer)>;
    let cases: Vec<(&str, Change)> = vec![
        (
            "price_per_gpu_hour",
            Box::new(|o| o.price_per_gpu_hour = Credits::from_units(-5)),
        ),
        (
            "price_per_gpu_hour",
            Box::new(|o| o.price_per_gpu_hour = Credits::ZERO),
        ),
        ("gpu_count", Box::new(|o| o.gpu_count = 0)),
        ("gpu_count", Box::new(|o| o.gpu_count = 65)),
        ("gpu_memory_mib", Box::new(|o| o.gpu_memory_mib = 0)),
        ("gpu_model", Box::new(|o| o.gpu_model = String::new())),
        ("gpu_model", Box::new(|o| o.gpu_model = "x".repeat(65))),
        ("gpu_model", Box::new(|o| o.gpu_model = "H100\n".into())),
        ("region", Box::new(|o| o.region = " eu".into())),
        ("min_hours", Box::new(|o| o.min_hours = 0)),
        ("max_hours", Box::new(|o| o.max_hours = o.min_hours - 1)),
        (
            "hardware_fingerprint",
            Box::new(|o| o.hardware_fingerprint = Id::ZERO),
        ),
        ("expires_at", Box::new(|o| o.expires_at = o.created_at)),
        (
            "expires_at",
            Box::new(|o| o.expires_at = o.created_at.plus_ms(25 * 3_600_000)),
        ),
    ];
    for (field, change) in cases {
        let offer = altered(samples::offer().unwrap(), &s, |o| change(o));
        assert_eq!(field_error(&offer), (Kind::Offer, field));
    }
}

#[test]
fn bid_and_proposal_field_rules() {
    let c = samples::customer();
    let bid = altered(samples::bid().unwrap(), &c, |b| b.hours = 0);
    assert_eq!(field_error(&bid), (Kind::Bid, "hours"));
    let bid = altered(samples::bid().unwrap(), &c, |b| {
        b.region = Some(String::new())
    });
    assert_eq!(field_error(&bid), (Kind::Bid, "region"));
    let bid = altered(samples::bid().unwrap(), &c, |b| {
        b.max_price_per_gpu_hour = Credits::from_units(-1)
    });
    assert_eq!(field_error(&bid), (Kind::Bid, "max_price_per_gpu_hour"));

    let p = altered(samples::lease_proposal().unwrap(), &c, |p| {
        p.window_secs = 0
    });
    assert_eq!(field_error(&p), (Kind::LeaseProposal, "window_secs"));
    let p = altered(samples::lease_proposal().unwrap(), &c, |p| {
        p.window_secs = 3601
    });
    assert_eq!(field_error(&p), (Kind::LeaseProposal, "window_secs"));
    let p = altered(samples::lease_proposal().unwrap(), &c, |p| {
        p.supplier = p.customer
    });
    assert_eq!(field_error(&p), (Kind::LeaseProposal, "supplier"));
}

#[test]
fn agreement_rules_cover_the_embedded_proposal() {
    let s = samples::supplier();
    let a = altered(samples::lease_agreement().unwrap(), &s, |a| {
        a.gpu_indices = vec![2]
    });
    assert_eq!(field_error(&a), (Kind::LeaseAgreement, "gpu_indices"));
    let a = altered(samples::lease_agreement().unwrap(), &s, |a| {
        a.gpu_indices = vec![2, 2]
    });
    assert_eq!(field_error(&a), (Kind::LeaseAgreement, "gpu_indices"));
    let a = altered(samples::lease_agreement().unwrap(), &s, |a| {
        a.ends_at = a.ends_at.plus_ms(1)
    });
    assert_eq!(field_error(&a), (Kind::LeaseAgreement, "ends_at"));
    // A supplier cannot rewrite what the customer proposed: the customer's
    // signature inside no longer verifies.
    let a = altered(samples::lease_agreement().unwrap(), &s, |a| {
        a.proposal.body.price_per_gpu_hour = Credits::from_units(9_000_000)
    });
    assert_eq!(
        a.verify(&clock()),
        Err(Error::BadSignature {
            kind: Kind::LeaseProposal,
            signer: samples::customer().public()
        })
    );
}

#[test]
fn attestation_rules() {
    let s = samples::supplier();
    let base = samples::usage_attestation;
    let a = altered(base().unwrap(), &s, |a| a.window_end = a.window_start);
    assert_eq!(field_error(&a), (Kind::UsageAttestation, "window_end"));
    let a = altered(base().unwrap(), &s, |a| a.billable_gpu_ms += 1);
    assert_eq!(field_error(&a), (Kind::UsageAttestation, "billable_gpu_ms"));
    let a = altered(base().unwrap(), &s, |a| {
        a.gpus[0].billable_ms = 60_001;
        a.billable_gpu_ms += 1;
    });
    assert_eq!(
        field_error(&a),
        (Kind::UsageAttestation, "gpus.billable_ms")
    );
    let a = altered(base().unwrap(), &s, |a| a.gpus[1].gpu_index = 2);
    assert_eq!(field_error(&a), (Kind::UsageAttestation, "gpus.gpu_index"));
    let a = altered(base().unwrap(), &s, |a| a.gpus[0].mean_util_bp = 10_001);
    assert_eq!(
        field_error(&a),
        (Kind::UsageAttestation, "gpus.mean_util_bp")
    );
    let a = altered(base().unwrap(), &s, |a| a.prev = Id([1; 32]));
    assert_eq!(field_error(&a), (Kind::UsageAttestation, "prev"));
    let a = altered(base().unwrap(), &s, |a| a.gpus.clear());
    assert_eq!(field_error(&a), (Kind::UsageAttestation, "gpus"));
}

#[test]
fn settlement_and_escrow_rules() {
    let s = samples::supplier();
    let r = altered(samples::settlement_request().unwrap(), &s, |r| {
        r.refund = Credits::from_units(1)
    });
    assert_eq!(field_error(&r), (Kind::SettlementRequest, "refund"));
    let r = altered(samples::settlement_request().unwrap(), &s, |r| {
        r.fee = Credits::from_units(-1)
    });
    assert_eq!(field_error(&r), (Kind::SettlementRequest, "fee"));
    let r = altered(samples::settlement_request().unwrap(), &s, |r| {
        r.first_window = 2;
        r.last_window = 1;
    });
    assert_eq!(field_error(&r), (Kind::SettlementRequest, "last_window"));
    let c = samples::customer();
    let o = altered(samples::escrow_order().unwrap(), &c, |o| {
        o.amount = Credits::ZERO
    });
    assert_eq!(field_error(&o), (Kind::EscrowOrder, "amount"));
}

#[test]
fn deposit_amount_must_be_positive() {
    let a = samples::admin();
    for amount in [0, -1] {
        let d = altered(samples::deposit().unwrap(), &a, |d| {
            d.amount = Credits::from_units(amount)
        });
        assert_eq!(field_error(&d), (Kind::Deposit, "amount"));
    }
}

#[test]
fn deposit_reference_is_printable_text_of_1_to_128_bytes() {
    let a = samples::admin();
    let bad = [
        String::new(),
        "x".repeat(129),
        "pay\n1".into(),
        " pay".into(),
    ];
    for reference in bad {
        let d = altered(samples::deposit().unwrap(), &a, |d| {
            d.reference = reference.clone()
        });
        assert_eq!(
            field_error(&d),
            (Kind::Deposit, "reference"),
            "{reference:?}"
        );
    }
    let d = altered(samples::deposit().unwrap(), &a, |d| {
        d.reference = "x".repeat(128)
    });
    d.verify(&clock()).unwrap();
}

#[test]
fn deposit_is_signed_by_the_admin_it_names() {
    // Whether that admin is the epoch's configured one is the
    // coordinator's check; the message itself only binds signer and field.
    let d = altered(samples::deposit().unwrap(), &samples::customer(), |_| {});
    assert!(matches!(
        d.verify(&clock()),
        Err(Error::WrongSigner {
            kind: Kind::Deposit,
            field: "admin",
            ..
        })
    ));
    // Two deposits that differ only in their reference are two deposits.
    let other = altered(samples::deposit().unwrap(), &samples::admin(), |d| {
        d.reference = "payment 2026-09-21/0002".into()
    });
    assert_ne!(
        other.id().unwrap(),
        samples::deposit().unwrap().id().unwrap()
    );
}

#[test]
fn withdrawal_amount_must_be_positive() {
    let c = samples::customer();
    for amount in [0, -1] {
        let w = altered(samples::withdrawal().unwrap(), &c, |w| {
            w.amount = Credits::from_units(amount)
        });
        assert_eq!(field_error(&w), (Kind::Withdrawal, "amount"));
    }
}

#[test]
fn withdrawal_destination_is_printable_text_of_1_to_128_bytes() {
    let c = samples::customer();
    let bad = [
        String::new(),
        "x".repeat(129),
        "iban\t1".into(),
        "iban ".into(),
    ];
    for destination in bad {
        let w = altered(samples::withdrawal().unwrap(), &c, |w| {
            w.destination = destination.clone()
        });
        assert_eq!(
            field_error(&w),
            (Kind::Withdrawal, "destination"),
            "{destination:?}"
        );
    }
}

#[test]
fn withdrawal_lifetime_is_at_most_an_hour() {
    let c = samples::customer();
    let w = altered(samples::withdrawal().unwrap(), &c, |w| {
        w.expires_at = w.created_at
    });
    assert_eq!(field_error(&w), (Kind::Withdrawal, "expires_at"));
    let w = altered(samples::withdrawal().unwrap(), &c, |w| {
        w.expires_at = w.created_at.plus_ms(3_600_001)
    });
    assert_eq!(field_error(&w), (Kind::Withdrawal, "expires_at"));
    let w = altered(samples::withdrawal().unwrap(), &c, |w| {
        w.expires_at = w.created_at.plus_ms(3_600_000)
    });
    w.verify(&clock()).unwrap();
}

#[test]
fn withdrawal_certificates_are_votes_for_withdrawals() {
    let set = samples::coordinator_set().unwrap();
    let cert = samples::withdrawal_certificate().unwrap();
    cert.verify(&set).unwrap();
    assert_eq!(
        cert.subject().unwrap(),
        samples::withdrawal().unwrap().id().unwrap()
    );
    // A vote made for the withdrawal names the withdrawal certificate kind,
    // and an escrow certificate's votes do not fit it.
    let coordinator = Keypair::from_seed(samples::COORDINATOR_SEEDS[0]);
    let vote =
        Certificate::vote_for(&samples::withdrawal().unwrap(), coordinator.public()).unwrap();
    assert_eq!(vote.certificate, Kind::WithdrawalCertificate);
    let mut swapped = cert.clone();
    swapped.votes[0].signature = samples::escrow_certificate().unwrap().votes[0].signature;
    assert!(matches!(
        swapped.verify(&set),
        Err(Error::BadSignature {
            kind: Kind::Vote,
            ..
        })
    ));
}

#[test]
fn votes_name_a_certificate_kind() {
    let k = Keypair::from_seed(samples::COORDINATOR_SEEDS[0]);
    let v = altered(samples::vote().unwrap(), &k, |v| {
        v.certificate = Kind::WithdrawalCertificate
    });
    v.verify(&clock()).unwrap();
    for kind in [Kind::Deposit, Kind::Withdrawal, Kind::EscrowOrder] {
        let v = altered(samples::vote().unwrap(), &k, |v| v.certificate = kind);
        assert_eq!(field_error(&v), (Kind::Vote, "certificate"), "{kind}");
    }
}

#[test]
fn lease_termination_names_a_lease() {
    let c = samples::customer();
    let t = altered(samples::lease_termination().unwrap(), &c, |t| {
        t.lease = Id::ZERO
    });
    assert_eq!(field_error(&t), (Kind::LeaseTermination, "lease"));
}

#[test]
fn lease_termination_supplier_differs_from_customer() {
    let c = samples::customer();
    let t = altered(samples::lease_termination().unwrap(), &c, |t| {
        t.supplier = t.customer
    });
    assert_eq!(field_error(&t), (Kind::LeaseTermination, "supplier"));
}

#[test]
fn lease_termination_detail_is_printable_text_of_at_most_256_bytes() {
    let c = samples::customer();
    for detail in ["x".repeat(257), "done\n".into(), " done".into()] {
        let t = altered(samples::lease_termination().unwrap(), &c, |t| {
            t.detail = detail.clone()
        });
        assert_eq!(
            field_error(&t),
            (Kind::LeaseTermination, "detail"),
            "{detail:?}"
        );
    }
    for detail in [String::new(), "x".repeat(256)] {
        let t = altered(samples::lease_termination().unwrap(), &c, |t| {
            t.detail = detail.clone()
        });
        t.verify(&clock()).unwrap();
    }
}

#[test]
fn lease_termination_is_signed_by_the_customer() {
    let t = altered(
        samples::lease_termination().unwrap(),
        &samples::supplier(),
        |_| {},
    );
    assert!(matches!(
        t.verify(&clock()),
        Err(Error::WrongSigner {
            kind: Kind::LeaseTermination,
            field: "customer",
            ..
        })
    ));
}

#[test]
fn alert_and_reputation_rules() {
    let s = samples::supplier();
    let a = altered(samples::alert().unwrap(), &s, |a| a.about = None);
    assert_eq!(field_error(&a), (Kind::Alert, "about"));
    let a = altered(samples::alert().unwrap(), &s, |a| {
        a.about = None;
        a.audience = Audience::Operators;
        a.rule = "gpu dropped".into();
    });
    assert_eq!(field_error(&a), (Kind::Alert, "rule"));
    let k = Keypair::from_seed(samples::COORDINATOR_SEEDS[0]);
    let r = altered(samples::reputation_report().unwrap(), &k, |r| {
        r.score_bp = 10_001
    });
    assert_eq!(field_error(&r), (Kind::ReputationReport, "score_bp"));
}

#[test]
fn version_signer_and_clock_rules() {
    let s = samples::supplier();
    let o = altered(samples::offer().unwrap(), &s, |o| o.version = 2);
    assert_eq!(
        o.verify(&clock()),
        Err(Error::UnsupportedVersion {
            kind: Kind::Offer,
            found: 2,
            supported: 1
        })
    );

    // Signed by someone other than the supplier it names.
    let stranger = Keypair::from_seed([0x77; 32]);
    let o = altered(samples::offer().unwrap(), &stranger, |_| {});
    assert!(matches!(
        o.verify(&clock()),
        Err(Error::WrongSigner {
            kind: Kind::Offer,
            field: "supplier",
            ..
        })
    ));

    let offer = samples::offer().unwrap();
    let early = Clock::at(T0.minus_ms(31_000));
    assert!(matches!(
        offer.verify(&early),
        Err(Error::FromTheFuture {
            kind: Kind::Offer,
            field: "created_at",
            ..
        })
    ));
    // Within the skew either side is fine.
    offer.verify(&Clock::at(T0.minus_ms(29_000))).unwrap();
    offer
        .verify(&Clock::at(offer.body.expires_at.plus_ms(29_000)))
        .unwrap();
    let late = Clock::at(offer.body.expires_at.plus_ms(31_000));
    assert_eq!(
        offer.verify(&late),
        Err(Error::Expired {
            kind: Kind::Offer,
            expires_at: offer.body.expires_at,
            now: late.now
        })
    );
}

#[test]
fn certificate_quorum_rules() {
    let set = samples::coordinator_set().unwrap();
    assert_eq!((set.max_faulty(), set.quorum()), (1, 3));
    let cert = samples::escrow_certificate().unwrap();
    cert.verify(&set).unwrap();
    // Offline check long after the order expired still holds.
    assert_eq!(set.epoch(), cert.message.body.epoch);

    let other_epoch = CoordinatorSet::new(2, set.members().to_vec()).unwrap();
    assert_eq!(
        cert.verify(&other_epoch),
        Err(Error::WrongEpoch {
            kind: Kind::EscrowCertificate,
            expected: 2,
            found: 1
        })
    );

    let mut few = cert.clone();
    few.votes.pop();
    assert_eq!(
        few.verify(&set),
        Err(Error::TooFewVotes {
            kind: Kind::EscrowCertificate,
            have: 2,
            need: 3
        })
    );

    let mut dup = cert.clone();
    dup.votes[1] = dup.votes[0];
    assert!(matches!(
        dup.verify(&set),
        Err(Error::DuplicateSigner { .. })
    ));

    let mut too_many = cert.clone();
    too_many.votes.extend(cert.votes.clone());
    assert!(matches!(
        too_many.verify(&set),
        Err(Error::Field { field: "votes", .. })
    ));

    // A vote by a key outside the set.
    let outsider = Keypair::from_seed([0x55; 32]);
    let mut unknown = cert.clone();
    unknown.votes[2].coordinator = outsider.public();
    assert_eq!(
        unknown.verify(&set),
        Err(Error::UnknownSigner {
            kind: Kind::EscrowCertificate,
            signer: outsider.public(),
            epoch: 1
        })
    );

    let settlement = samples::settlement_certificate().unwrap();
    let mut swapped = cert.clone();
    swapped.votes[0].signature = settlement.votes[0].signature;
    assert_eq!(
        swapped.verify(&set),
        Err(Error::BadSignature {
            kind: Kind::Vote,
            signer: set.members()[0]
        })
    );

    // Votes collected for another message cannot be assembled into this one.
    let coordinator = Keypair::from_seed(samples::COORDINATOR_SEEDS[0]);
    let vote = Signed::sign(
        Certificate::vote_for(
            &samples::settlement_request().unwrap(),
            coordinator.public(),
        )
        .unwrap(),
        &coordinator,
    )
    .unwrap();
    assert!(Certificate::assemble(samples::escrow_order().unwrap(), &[vote]).is_err());
}

#[test]
fn coordinator_sets_are_checked() {
    assert!(CoordinatorSet::new(1, vec![]).is_err());
    let k = samples::supplier().public();
    assert!(CoordinatorSet::new(1, vec![k, k]).is_err());
    for (n, quorum) in [(1, 1), (4, 3), (7, 5), (10, 7), (5, 4)] {
        let members = (0..n)
            .map(|i| Keypair::from_seed([i as u8 + 1; 32]).public())
            .collect();
        assert_eq!(
            CoordinatorSet::new(1, members).unwrap().quorum(),
            quorum,
            "n={n}"
        );
    }
}

#[test]
fn over_precise_amounts_never_reach_the_wire() {
    // Credits cannot hold more than six places, so a JSON message with a
    // seventh is refused while parsing, before it could be signed.
    let mut json = serde_json::to_value(samples::offer().unwrap()).unwrap();
    json["body"]["price_per_gpu_hour"] = "2.4900001".into();
    let err = serde_json::from_value::<Signed<rigmesh_protocol::Offer>>(json).unwrap_err();
    assert!(err.to_string().contains("decimal places"), "{err}");
}
