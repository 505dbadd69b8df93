//! The flow engine: reading flow files ([`file`], JSON or YAML) and saving
//! flow documents ([`save`], shared by the API and `hookflow flows apply`),
//! executing runs ([`exec`] walks a run through its steps in memory,
//! [`steps`] holds what each step type does) and the loop that claims due
//! runs and stores their advance ([`engine`]). Time comes from a
//! [`clock::Clock`] only. See ARCHITECTURE.md.

pub mod clock;
pub mod engine;
pub mod exec;
pub mod file;
pub mod inbound;
pub mod inbound_log;
pub mod records;
pub mod save;
pub mod steps;

pub use clock::{Clock, SystemClock, TestClock};
pub use engine::{Engine, EngineConfig};
