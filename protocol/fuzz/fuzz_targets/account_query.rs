//! Fuzzes the `account_query` decoder: no input may panic it, and whatever
//! decodes must re-encode to the same bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rigmesh_protocol::wire::fuzz_decode(rigmesh_protocol::Kind::AccountQuery, data);
});
