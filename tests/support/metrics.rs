//! `/metrics` as a test reads it: the shared reading of `berth-testkit`.

pub use berth_testkit::{Exposition, metric_value, parse_metrics};
