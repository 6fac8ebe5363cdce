//! The ops layer: what tells operators (and the fleet) how the worker is doing. [`health`]
//! owns the probes, breakers and pause clock; [`metrics`] names and emits; [`http`] serves
//! `/metrics`, `/healthz` and `/readyz`; [`telemetry`] sets up logs; [`watchdog`] supervises
//! every long-running task. Every other layer may use this one; it uses none of them.

pub mod health;
pub mod http;
pub(crate) mod metrics;
pub mod telemetry;
pub mod watchdog;
