//! Writes `specs/vectors/`: one JSON file per kind built from the samples,
//! plus `invalid.json`, inputs every implementation must refuse with the
//! named error. Run from the workspace root:
//! `cargo run -p rigmesh-protocol --example write_vectors`.

// A developer tool over its own known-good samples: indexing JSON it just
// built cannot fail.
#![allow(clippy::indexing_slicing)]

use std::path::Path;

use anyhow::Context;
use rigmesh_protocol::crypto::Keypair;
use rigmesh_protocol::kind::Kind;
use rigmesh_protocol::samples;
use rigmesh_protocol::wire::WireMessage;
use rigmesh_protocol::{Certificate, Signed, Vote, VoteSignature};
use serde_json::{json, Value};

fn body_hex(message: &WireMessage) -> anyhow::Result<Option<(String, String)>> {
    macro_rules! signed {
        ($m:expr) => {
            Some((hex::encode($m.body_bytes()?), $m.signature.to_string()))
        };
    }
    Ok(match message {
        WireMessage::NodeBinding(m) => signed!(m),
        WireMessage::Offer(m) => signed!(m),
        WireMessage::Bid(m) => signed!(m),
        WireMessage::LeaseProposal(m) => signed!(m),
        WireMessage::LeaseAgreement(m) => signed!(m),
        WireMessage::EscrowOrder(m) => signed!(m),
        WireMessage::Vote(m) => signed!(m),
        WireMessage::UsageAttestation(m) => signed!(m),
        WireMessage::UsageAck(m) => signed!(m),
        WireMessage::UsageDispute(m) => signed!(m),
        WireMessage::SettlementRequest(m) => signed!(m),
        WireMessage::ReputationReport(m) => signed!(m),
        WireMessage::Alert(m) => signed!(m),
        WireMessage::Deposit(m) => signed!(m),
        WireMessage::Withdrawal(m) => signed!(m),
        WireMessage::LeaseTermination(m) => signed!(m),
        WireMessage::EscrowRelease(m) => signed!(m),
        WireMessage::Approval(m) => signed!(m),
        WireMessage::DisputeResolution(m) => signed!(m),
        WireMessage::AccountQuery(m) => signed!(m),
        WireMessage::EscrowCertificate(_)
        | WireMessage::SettlementCertificate(_)
        | WireMessage::WithdrawalCertificate(_)
        | WireMessage::ReleaseCertificate(_)
        | WireMessage::ResolutionCertificate(_) => None,
    })
}

fn vector(kind: Kind) -> anyhow::Result<Value> {
    let message = samples::sample(kind)?;
    let wire = message.to_bytes()?;
    let mut v = json!({
        "kind": kind.name(),
        "domain": kind.domain(),
        "max_size": kind.max_size(),
        "message": serde_json::to_value(&message)?["message"],
        "wire_hex": hex::encode(&wire),
        "id": message.id()?.to_string(),
    });
    if let Some((body, signature)) = body_hex(&message)? {
        let seed = samples::signer_seed(kind);
        v["signer_seed"] = json!(hex::encode(seed));
        v["signer"] = json!(Keypair::from_seed(seed).public().to_string());
        v["body_hex"] = json!(body);
        v["signature"] = json!(signature);
    } else {
        let set = samples::coordinator_set()?;
        v["coordinator_set"] = json!({
            "epoch": set.epoch(),
            "members": set.members().iter().map(ToString::to_string).collect::<Vec<_>>(),
            "quorum": set.quorum(),
        });
        v["coordinator_seeds"] = json!(samples::COORDINATOR_SEEDS
            .iter()
            .map(hex::encode)
            .collect::<Vec<_>>());
        v["author_seed"] = json!(hex::encode(samples::signer_seed(kind)));
    }
    Ok(v)
}

fn invalid(kind: Kind, what: &str, bytes: &[u8], error: &str) -> Value {
    json!({ "kind": kind.name(), "what": what, "wire_hex": hex::encode(bytes), "error": error })
}

fn invalid_vectors() -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    let offer = samples::offer()?;
    let wire = offer.to_bytes()?;

    let mut trailing = wire.clone();
    trailing.push(0);
    out.push(invalid(
        Kind::Offer,
        "one byte after a valid offer",
        &trailing,
        "trailing_bytes",
    ));
    out.push(invalid(
        Kind::Offer,
        "a valid offer cut short by one byte",
        &wire[..wire.len() - 1],
        "malformed",
    ));
    out.push(invalid(
        Kind::Offer,
        "a valid offer padded past the offer size limit",
        &[wire.as_slice(), &vec![0u8; Kind::Offer.max_size()]].concat(),
        "too_large",
    ));
    let mut flipped = wire.clone();
    // Byte 60 lies inside gpu_model's text: still well-formed, wrong signature.
    flipped[60] ^= 0x01;
    out.push(invalid(
        Kind::Offer,
        "one bit of the model name flipped",
        &flipped,
        "bad_signature",
    ));

    let mut other_domain = offer.clone();
    other_domain.signature = samples::supplier().sign(Kind::Bid, &offer.body_bytes()?);
    out.push(invalid(
        Kind::Offer,
        "the offer body signed under the bid domain",
        &other_domain.to_bytes()?,
        "bad_signature",
    ));

    let mut negative = offer.body.clone();
    negative.price_per_gpu_hour = rigmesh_protocol::Credits::from_units(-1);
    let negative = Signed {
        signature: samples::supplier().sign(
            Kind::Offer,
            &rigmesh_protocol::codec::encode(Kind::Offer, &negative)?,
        ),
        signer: offer.signer,
        body: negative,
    };
    out.push(invalid(
        Kind::Offer,
        "a negative price, correctly signed",
        &negative.to_bytes()?,
        "field",
    ));

    let cert = samples::escrow_certificate()?;
    let mut dup = cert.clone();
    dup.votes[2] = dup.votes[0];
    out.push(invalid(
        Kind::EscrowCertificate,
        "the same coordinator's vote twice",
        &dup.to_bytes()?,
        "duplicate_signer",
    ));
    let mut few = cert.clone();
    few.votes.truncate(2);
    out.push(invalid(
        Kind::EscrowCertificate,
        "two votes, quorum is three",
        &few.to_bytes()?,
        "too_few_votes",
    ));
    let mut stranger = cert.clone();
    let outsider = Keypair::from_seed([0x99; 32]);
    let vote: Vote = Certificate::vote_for(&cert.message, outsider.public())?;
    let signed = Signed::sign(vote, &outsider)?;
    stranger.votes[1] = VoteSignature {
        coordinator: outsider.public(),
        signature: signed.signature,
    };
    out.push(invalid(
        Kind::EscrowCertificate,
        "a vote by a key outside the coordinator set",
        &stranger.to_bytes()?,
        "unknown_signer",
    ));
    let mut forged = cert;
    forged.votes[1].signature = forged.votes[0].signature;
    out.push(invalid(
        Kind::EscrowCertificate,
        "a member's vote carrying another member's signature",
        &forged.to_bytes()?,
        "bad_signature",
    ));
    Ok(out)
}

/// Seeds `protocol/fuzz/corpus/<kind>/` with each kind's sample, its
/// invalid variants and a few shapes that stress length prefixes.
fn write_corpus(invalid: &[Value]) -> anyhow::Result<()> {
    let root = Path::new("protocol/fuzz/corpus");
    for kind in Kind::ALL {
        let dir = root.join(kind.name());
        std::fs::create_dir_all(&dir)?;
        let sample = samples::sample(kind)?.to_bytes()?;
        let mut inputs = vec![sample.clone(), sample[..sample.len() / 2].to_vec()];
        // Every u64 slot of the sample, one at a time, set to a huge value:
        // whichever slot is a length prefix now claims far more than the
        // input holds.
        for at in (2..sample.len().saturating_sub(8)).step_by(8).take(24) {
            let mut huge = sample.clone();
            huge[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
            inputs.push(huge);
        }
        inputs.push(Vec::new());
        for case in invalid.iter().filter(|c| c["kind"] == kind.name()) {
            inputs.push(hex::decode(case["wire_hex"].as_str().unwrap_or_default())?);
        }
        for input in inputs {
            let name = blake3::hash(&input).to_hex()[..16].to_string();
            std::fs::write(dir.join(name), &input)?;
        }
    }
    for name in rigmesh_protocol::rpc::FRAME_DECODERS {
        std::fs::create_dir_all(root.join(name))?;
    }
    for (name, frame) in rigmesh_protocol::rpc::sample_frames()? {
        let dir = root.join(name);
        let mut inputs = vec![frame.clone(), frame[..frame.len() / 2].to_vec()];
        for at in (0..frame.len().saturating_sub(8)).step_by(8).take(16) {
            let mut huge = frame.clone();
            huge[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
            inputs.push(huge);
        }
        for input in inputs {
            let file = blake3::hash(&input).to_hex()[..16].to_string();
            std::fs::write(dir.join(file), &input)?;
        }
    }
    println!("wrote {}", root.display());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let dir = Path::new("specs/vectors");
    std::fs::create_dir_all(dir).context("creating specs/vectors (run from the workspace root)")?;
    for kind in Kind::ALL {
        let path = dir.join(format!("{}.json", kind.name()));
        let text = serde_json::to_string_pretty(&vector(kind)?)? + "\n";
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    let invalid = invalid_vectors()?;
    let text = serde_json::to_string_pretty(&invalid)? + "\n";
    std::fs::write(dir.join("invalid.json"), text)?;
    write_corpus(&invalid)?;
    println!("wrote {}", dir.join("invalid.json").display());
    Ok(())
}
