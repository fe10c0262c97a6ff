//! `berth-worker`: slot workers. To be written.
fn main() {}
