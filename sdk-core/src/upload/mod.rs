//! Getting buffered events to the server.
//!
//! - [`policy`]: what to do after each answer, a pure function of the answer and the attempt.
//! - [`schedule`]: when the background uploader drains next, a pure function too.
//! - [`transport`]: the small trait a request goes through, the seam for an app's own HTTP
//!   stack, and the built-in HTTP implementation.
//! - [`endpoint`]: checking the endpoint URL up front.
//! - `drain`: the loop that packs, sends and settles until the buffer is empty or must wait.

pub(crate) mod drain;
pub mod endpoint;
pub mod policy;
pub mod schedule;
pub mod transport;
