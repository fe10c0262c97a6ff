//! berth slot workers (DESIGN §1–3): one independent task per slot that holds the slot lock,
//! claims assign requests while its slot is free, answers release and renew, takes expired
//! leases back and cleans the slot. Every bit of slot state lives in the store record; a
//! worker keeps in memory only the last view it read or wrote, so it can be killed at any
//! moment and a successor resumes from the store.
//!
//! [`run_slots`] hosts any number of slot workers in one process; the `berth-worker` binary
//! is a thin shell around it (flags in [`cli`]).
//!
//! Imports run one way: `slot` (the state machine, with `claim`, `control`, `expiry` and
//! `clean` as its children) → `amqp` (broker plumbing: connections, the slot lock, pool
//! feeds, events) → the `berth` library. `amqp` knows nothing of slots or the store. Both
//! count what they do in [`metrics`], a leaf that knows neither.

mod amqp;
pub mod cli;
pub mod fake;
pub mod metrics;
mod options;
mod process;
mod slot;

pub use metrics::Metrics;
pub use options::{SlotSpec, WorkerOptions};
pub use process::{RunError, run_slots};
