//! Fuzzes the `sync_response` frame decoder: no input may panic it, and whatever
//! decodes must re-encode to the same bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rigmesh_protocol::rpc::fuzz_decode_frame("sync_response", data);
});
