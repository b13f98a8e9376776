//! Fuzzes the one decode chokepoint: any bytes must decode to a request or to an error
//! with a kind and a message, never a panic; and every error must encode to a valid
//! JSON-RPC response line.
#![no_main]

use berth::api::protocol::{decode, error_response};
use berth::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let config = Config::default();
    let d = decode(data, &config, true);
    match &d.request {
        Ok(req) => {
            // A decoded request names a valid project, if any.
            if let Some(name) = req.project() {
                assert!(berth::model::ProjectName::parse(name.as_str()).is_ok());
            }
        }
        Err(e) => {
            assert!(!e.message.is_empty());
            let line = error_response(&d.id, e);
            let v: serde_json::Value = serde_json::from_str(&line).expect("error responses are JSON");
            assert_eq!(v["error"]["data"]["kind"], e.kind.as_str());
        }
    }
});
