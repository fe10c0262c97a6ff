//! The priority an acquire gets (DESIGN §3 "Priority"): decided here, in one place, from the
//! priority the request asked for (0–9, already checked).

/// The priority the assign request goes out with, for a request that asked for `requested`.
/// Today every client gets what it asks for; a cap per client (its `max_priority`) belongs
/// here.
pub(crate) fn effective(requested: u8) -> u8 {
    requested
}
