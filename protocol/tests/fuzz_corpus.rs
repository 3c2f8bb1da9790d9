//! Replays the committed fuzz corpus (`protocol/fuzz/corpus/`) through
//! every decoder, so a regression that a fuzzer once found fails an
//! ordinary `cargo test` without a nightly toolchain.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use rigmesh_protocol::kind::Kind;
use rigmesh_protocol::wire;

#[test]
fn corpus_inputs_never_panic_any_decoder() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut replayed = 0;
    for kind in Kind::ALL {
        let dir = root.join(kind.name());
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}; every decoder needs a corpus", dir.display()));
        for entry in entries {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            for target in Kind::ALL {
                wire::fuzz_decode(target, &bytes);
            }
            replayed += 1;
        }
    }
    assert!(
        replayed >= Kind::ALL.len() * 4,
        "only {replayed} corpus inputs"
    );
}

#[test]
fn frame_corpus_inputs_never_panic_any_frame_decoder() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut replayed = 0;
    for name in rigmesh_protocol::rpc::FRAME_DECODERS {
        let dir = root.join(name);
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}; every decoder needs a corpus", dir.display()));
        for entry in entries {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            for decoder in rigmesh_protocol::rpc::FRAME_DECODERS {
                rigmesh_protocol::rpc::fuzz_decode_frame(decoder, &bytes);
            }
            replayed += 1;
        }
    }
    assert!(replayed >= rigmesh_protocol::rpc::FRAME_DECODERS.len() * 2);
}

#[test]
fn every_decoder_has_a_fuzz_target() {
    let targets = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets");
    let names = Kind::ALL
        .iter()
        .map(|k| k.name())
        .chain(rigmesh_protocol::rpc::FRAME_DECODERS);
    for name in names {
        let path = targets.join(format!("{name}.rs"));
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(text.contains("fuzz_decode"), "{}", path.display());
        assert!(
            text.contains(name),
            "{} fuzzes another decoder",
            path.display()
        );
    }
}
