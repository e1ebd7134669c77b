//! The `delivery-pipeline` command's building blocks, shared by `main.rs` and the integration
//! tests: configuration loading, synthetic delivery events, the load generator and the demo.

pub mod demo;
pub mod events;
pub mod produce;
pub mod settings;
