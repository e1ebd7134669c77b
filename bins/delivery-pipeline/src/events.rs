//! Realistic synthetic delivery-tracking events, about 500 bytes each, as the design sizes them.

use rand::Rng;
use uuid::Uuid;

/// One generated event.
#[derive(Debug, Clone)]
pub struct SyntheticEvent {
    /// The payload's `event_id`.
    pub event_id: String,
    /// Message key: the tracking id, so one shipment's events stay in one partition, in order.
    pub key: String,
    /// The JSON payload.
    pub payload: Vec<u8>,
}

const STATUSES: &[&str] =
    &["LABEL_CREATED", "PICKED_UP", "IN_TRANSIT", "AT_HUB", "OUT_FOR_DELIVERY", "DELIVERED", "EXCEPTION"];
const CARRIERS: &[&str] = &["DHL", "UPS", "FedEx", "DPD", "GLS", "PostNL"];
const CITIES: &[(&str, &str, f64, f64)] = &[
    ("Berlin", "DE", 52.52, 13.40),
    ("Paris", "FR", 48.86, 2.35),
    ("Madrid", "ES", 40.42, -3.70),
    ("Warsaw", "PL", 52.23, 21.01),
    ("Milan", "IT", 45.46, 9.19),
    ("Rotterdam", "NL", 51.92, 4.48),
];

/// Target payload size in bytes.
pub const TARGET_SIZE: usize = 500;

/// Generates event number `seq` of a run. Events of one shipment (eight in a row share a
/// tracking id) progress through the statuses.
pub fn synthetic_event(seq: u64, rng: &mut impl Rng) -> SyntheticEvent {
    let event_id = Uuid::now_v7().to_string();
    let shipment = seq / 8;
    let tracking_id = format!("TRK{:012}", shipment.wrapping_mul(2_654_435_761) % 1_000_000_000_000);
    let status = STATUSES[(seq % 8).min(STATUSES.len() as u64 - 1) as usize];
    let (city, country, lat, lon) = CITIES[rng.random_range(0..CITIES.len())];
    let carrier = CARRIERS[(shipment % CARRIERS.len() as u64) as usize];
    let now = time::OffsetDateTime::now_utc();
    let event_time = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        now.year(),
        now.month() as u8,
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.millisecond()
    );
    let mut payload = format!(
        concat!(
            r#"{{"event_id":"{}","tracking_id":"{}","status":"{}","event_time":"{}","sequence":{},"#,
            r#""carrier":"{}","service":"express","courier_id":"C-{:05}","attempt":{},"#,
            r#""location":{{"facility":"HUB-{}-{:02}","city":"{}","country":"{}","lat":{:.4},"lon":{:.4}}},"#,
            r#""weight_kg":{:.2},"dimensions_cm":[{},{},{}],"signature_required":{},"note":""#
        ),
        event_id,
        tracking_id,
        status,
        event_time,
        seq,
        carrier,
        rng.random_range(0..100_000),
        1 + seq % 3,
        &city[..3].to_ascii_uppercase(),
        rng.random_range(1..20),
        city,
        country,
        lat + rng.random_range(-0.1..0.1),
        lon + rng.random_range(-0.1..0.1),
        rng.random_range(0.1..30.0),
        rng.random_range(10..80),
        rng.random_range(10..60),
        rng.random_range(5..40),
        seq.is_multiple_of(5),
    );
    const FILLER: &str = "Parcel scanned at sorting facility; handed to linehaul for the next leg. ";
    while payload.len() + 2 < TARGET_SIZE {
        let room = TARGET_SIZE - 2 - payload.len();
        payload.push_str(&FILLER[..room.min(FILLER.len())]);
    }
    payload.push_str("\"}");
    SyntheticEvent { event_id, key: tracking_id, payload: payload.into_bytes() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_valid_json_of_about_500_bytes() {
        let mut rng = rand::rng();
        for seq in 0..50 {
            let e = synthetic_event(seq, &mut rng);
            let v: serde_json::Value = serde_json::from_slice(&e.payload).expect("valid JSON");
            assert_eq!(v["event_id"], e.event_id.as_str());
            assert_eq!(v["tracking_id"], e.key.as_str());
            assert!((TARGET_SIZE - 5..=TARGET_SIZE + 5).contains(&e.payload.len()), "{}", e.payload.len());
        }
    }
}
