//! Loads `specs/vectors/*.json` and checks them both ways: the JSON fields
//! encode to the stated bytes, the bytes decode to the fields, the id and
//! the signatures are what the vector says, and re-signing with the stated
//! seed reproduces the signature. Also checks `invalid.json`: each input is
//! refused with the stated error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::PathBuf;

use rigmesh_protocol::kind::Kind;
use rigmesh_protocol::samples;
use rigmesh_protocol::wire::WireMessage;
use rigmesh_protocol::{Clock, CoordinatorSet, Id, Keypair, PublicKey, UnixMillis};
use serde_json::{json, Value};

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../specs/vectors")
}

fn load(name: &str) -> Value {
    let path = vectors_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (regenerate with the write_vectors example)",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap()
}

fn seed(v: &Value) -> [u8; 32] {
    hex::decode(v.as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap()
}

fn set_from(v: &Value) -> CoordinatorSet {
    let members: Vec<PublicKey> = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().parse().unwrap())
        .collect();
    let set = CoordinatorSet::new(v["epoch"].as_u64().unwrap(), members).unwrap();
    assert_eq!(set.quorum() as u64, v["quorum"].as_u64().unwrap());
    set
}

#[test]
fn every_kind_has_a_vector_that_checks_both_ways() {
    for kind in Kind::ALL {
        let v = load(&format!("{}.json", kind.name()));
        assert_eq!(v["kind"], kind.name());
        assert_eq!(v["domain"], kind.domain());
        assert_eq!(v["max_size"].as_u64().unwrap() as usize, kind.max_size());

        // Fields -> bytes.
        let from_json: WireMessage =
            serde_json::from_value(json!({"kind": kind.name(), "message": v["message"]})).unwrap();
        let wire = hex::decode(v["wire_hex"].as_str().unwrap()).unwrap();
        assert_eq!(from_json.to_bytes().unwrap(), wire, "{kind}: encode");
        // Bytes -> fields.
        let decoded = WireMessage::decode(kind, &wire).unwrap();
        assert_eq!(decoded, from_json, "{kind}: decode");
        // Id.
        let id: Id = v["id"].as_str().unwrap().parse().unwrap();
        assert_eq!(decoded.id().unwrap(), id, "{kind}: id");

        let set = v.get("coordinator_set").map(set_from);
        // A vector is a record: check it at its own time, not today's.
        let created = v["message"]["body"]["created_at"]
            .as_u64()
            .or_else(|| v["message"]["message"]["body"]["created_at"].as_u64())
            .unwrap_or(samples::T0.0);
        decoded
            .verify(&Clock::at(UnixMillis(created)), set.as_ref())
            .unwrap_or_else(|e| panic!("{kind}: {e}"));

        if let Some(body_hex) = v.get("body_hex") {
            let body = hex::decode(body_hex.as_str().unwrap()).unwrap();
            let key = Keypair::from_seed(seed(&v["signer_seed"]));
            assert_eq!(key.public().to_string(), v["signer"], "{kind}: signer");
            assert_eq!(
                key.sign(kind, &body).to_string(),
                v["signature"],
                "{kind}: re-signing with the seed"
            );
            assert_eq!(Id::of(kind, &body), id, "{kind}: id over body bytes");
            // The envelope is body || signer || signature.
            assert_eq!(
                &wire[..body.len()],
                body.as_slice(),
                "{kind}: envelope layout"
            );
            assert_eq!(wire.len(), body.len() + 32 + 64, "{kind}: envelope length");
        } else {
            let seeds: Vec<PublicKey> = v["coordinator_seeds"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| Keypair::from_seed(seed(s)).public())
                .collect();
            assert_eq!(seeds, set.unwrap().members(), "{kind}: coordinator seeds");
        }
    }
}

#[test]
fn committed_vectors_match_the_current_encoding() {
    // A change to any wire type changes the samples' bytes; the committed
    // vectors must then be regenerated deliberately, never drift silently.
    for kind in Kind::ALL {
        let v = load(&format!("{}.json", kind.name()));
        let sample = samples::sample(kind).unwrap();
        assert_eq!(
            hex::encode(sample.to_bytes().unwrap()),
            v["wire_hex"].as_str().unwrap(),
            "{kind}: specs/vectors is stale; run the write_vectors example"
        );
    }
}

#[test]
fn invalid_vectors_are_refused_with_the_stated_error() {
    let cases = load("invalid.json");
    let set = samples::coordinator_set().unwrap();
    let clock = Clock::at(samples::T0);
    assert!(cases.as_array().unwrap().len() >= 10);
    for case in cases.as_array().unwrap() {
        let kind = Kind::from_name(case["kind"].as_str().unwrap()).unwrap();
        let bytes = hex::decode(case["wire_hex"].as_str().unwrap()).unwrap();
        let err = WireMessage::decode(kind, &bytes)
            .and_then(|m| m.verify(&clock, Some(&set)))
            .expect_err(case["what"].as_str().unwrap());
        assert_eq!(err.code(), case["error"], "{}: got {err}", case["what"]);
    }
}
