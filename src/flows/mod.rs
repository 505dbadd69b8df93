//! The flow engine's home. Today: reading flow files (`file`, JSON or YAML) and
//! saving flow documents, shared by the API
//! and the CLI (`flows apply`) so both apply the same rules. The engine
//! (runs, triggers, steps, timers) comes next; see ARCHITECTURE.md.

pub mod file;
pub mod save;
