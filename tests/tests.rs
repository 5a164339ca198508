//! modelcast's one integration-test binary. Each module is one area; helpers live in `lib.rs`.

mod bounded;
mod client;
mod cluster;
mod codegen;
mod contract_model;
mod crash;
mod delivery_contract;
mod deploy;
mod edge;
mod hub_backpressure;
mod hub_bounds;
mod hub_fanout;
mod hub_state;
mod hub_timing;
mod notifiers;
mod protocol;
mod protocol_props;
mod publish_ws;
mod robustness;
mod schema_compat;
mod security;
mod server_browser;
mod server_http;
mod server_ws;
mod sse;
mod tidy;
