//! Benchmarks of delivery-pipeline's per-record hot paths; see `benches/hot_paths.rs` and run
//! them with `cargo bench -p dp-benches` (or `just bench-micro`).
//!
//! This crate has no code of its own; its library target only hosts the sample data builders.

use std::sync::Arc;

use dp_core::{Header, Record};

/// A record like the synthetic delivery events: ~500-byte JSON payload, a key and one header.
pub fn sample_record(offset: i64) -> Record {
    let payload = format!(
        concat!(
            r#"{{"event_id":"0193a5b0-7c1e-7d2a-9f3b-{:012}","tracking_id":"TRK{:012}","status":"IN_TRANSIT","#,
            r#""event_time":"2026-11-24T10:15:30.123Z","sequence":{},"carrier":"DHL","service":"express","#,
            r#""courier_id":"C-01234","attempt":1,"location":{{"facility":"HUB-BER-04","city":"Berlin","#,
            r#""country":"DE","lat":52.5200,"lon":13.4050}},"weight_kg":2.35,"dimensions_cm":[30,20,10],"#,
            r#""signature_required":false,"note":"Parcel scanned at sorting facility; handed to linehaul for the next leg. Parcel scanned at sorting"}}"#
        ),
        offset, offset, offset
    );
    Record {
        topic: Arc::from("delivery-events"),
        partition: (offset % 4) as i32,
        offset,
        key: Some(format!("TRK{offset:012}").into_bytes()),
        headers: vec![Header { name: "source".into(), value: Some(b"scanner-7".to_vec()) }],
        timestamp_ms: Some(1_764_000_000_000 + offset),
        payload: Some(payload.into_bytes()),
        follows: None,
    }
}
