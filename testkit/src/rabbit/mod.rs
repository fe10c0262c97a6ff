//! Private RabbitMQ nodes on loopback, for the tests that stop, kill or pause a broker and for
//! the bench's broker measurements: each node is Debian's `rabbitmq-server` run in the
//! foreground as a child process, with its own node name, ports and data directory, never the
//! shared broker on 5672. Nodes of one cluster share an Erlang cookie in a `HOME` of their own
//! ([`write_cookie`]) and are joined with `rabbitmqctl join_cluster` ([`join`]).
//!
//! [`Node`] answers errors as text, for the bench to report; the tests' [`PrivateBroker`] and
//! [`PrivateCluster`] panic with them, and remove their directories when dropped.

mod broker;
mod cluster;
mod node;

pub use broker::PrivateBroker;
pub use cluster::PrivateCluster;
pub use node::{Node, NodeOptions, join, write_cookie};
