//! The `delivery-pipeline` command's building blocks, shared by `main.rs` and the integration
//! tests: configuration loading, synthetic delivery events, the load generator, the demo and the
//! dead-letter commands.

pub mod bench;
pub mod demo;
pub mod dlq;
pub mod events;
pub mod http;
pub mod offsets;
pub mod produce;
pub mod settings;
