//! tokenwarden: an MCP server that manages access tokens as MCP tools and enforces them.
//!
//! The layers, from the inside out:
//!
//! - [`secret`], [`timestamp`], [`record`] and [`rules`]: plain data and pure functions. The
//!   secret format, tool patterns, CIDR ranges, attenuation and the one authorisation
//!   decision ([`rules::authorize::authorize`]) live here, with no I/O.
//! - [`store`]: the only code that touches sled, with the in-memory cache of hot records.
//! - [`service`]: the operations every front end calls (create, scope, revoke, …), enforcing
//!   management reach and attenuation and flushing changes before they return.
//! - The front ends are thin adapters over [`service::Service`].
//! - [`gateway`]: upstream MCP servers fronted as buckets; it asks nothing and decides
//!   nothing itself: `mcp` asks the service before forwarding a call.
//! - [`rest`]: the REST API under `/v1`, each endpoint one of the MCP tools.
//! - [`observe`]: every tool call and refused request as an event for the access log and the
//!   metrics.
//! - [`metrics`]: the Prometheus metrics, fed by those events and read at scrape time.
//! - [`trace`]: spans of every tool call (request, decision, upstream call) for an OTLP/HTTP
//!   collector, when `serve --otlp-endpoint` asks for them; W3C `traceparent` in and out.
//! - [`oauth`]: the OAuth 2.1 authorization server; the tokens it issues are children of the
//!   approving token, minted through the service like any other.

pub mod audit;
pub mod cli;
pub mod console;
pub mod error;
pub mod gateway;
pub mod http;
pub mod mcp;
pub mod metrics;
pub mod oauth;
pub mod observe;
pub mod record;
pub mod rest;
pub mod rules;
pub mod secret;
pub mod service;
pub mod store;
pub mod timestamp;
pub mod trace;
