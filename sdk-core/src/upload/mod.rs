//! Getting buffered events to the server.
//!
//! - [`policy`]: what to do after each answer, a pure function of the answer and the attempt.
//! - [`transport`]: the small trait a request goes through, and its HTTP implementation.
//! - [`endpoint`]: checking the endpoint URL up front.
//! - [`drain`]: the loop that packs, sends and settles until the buffer is empty or must wait.

pub mod drain;
pub mod endpoint;
pub mod policy;
pub mod transport;
