//! The issuance engine, sans I/O.
//!
//! Device sessions are driven by the server: the engine produces batches of
//! device commands ([`Batch`]), a client next to the device relays them and
//! returns the responses, and the engine consumes the responses to produce
//! the next batch. Nothing here touches a socket, a database or the clock, so
//! every branch runs in microseconds in tests, and a session is plain data
//! the server can persist after each step (sealed: states hold PINs and keys).
//!
//! The PIV personalisation ([`piv`]) is written in the style of rustls'
//! state machines: each state is a type that consumes its input and returns
//! the next state, so an impossible transition does not compile. A batch
//! ends only where the next command depends on the device's answer: the
//! number of batches is the number of client round trips.

pub mod answers;
pub mod b64;
pub mod batch;
pub mod change_pin;
pub mod failure;
pub mod fido;
pub mod knowledge;
pub mod mgmt_key;
pub mod offline_unlock;
pub mod piv;
pub mod plan;
pub mod prompt;
pub mod recycle;
pub mod session;
pub mod unlock;
pub mod update;

pub use batch::{Batch, Channel, Command, Response};
pub use failure::{Failure, FailureCode, Step};
pub use mgmt_key::{ManagementKey, MgmtAlgorithm};
pub use prompt::{Prompt, PromptKind};
pub use session::{
    Answers, Context, DeviceMove, DeviceSession, Effect, Ending, Input, NewIssuance, PasskeyRecord,
    Refusal, RegisteredMethod,
};
