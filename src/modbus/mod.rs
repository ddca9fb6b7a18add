//! The Modbus engine: links (TCP, RTU, RTU over TCP), device profiles, the per-link scheduler
//! that polls and coalesces, validated writes with read-back, and diagnostics.
//!
//! It owns every conversation with field devices: nothing else in the process opens a bus. It
//! never decides who may do what (the API checks capabilities against [`profile::Point::read`] /
//! [`profile::Point::write`] before calling it) and never blocks one link on another.
//!
//! - [`profile`]: profile TOML, validation, registry.
//! - [`codec`]: raw registers ⇄ engineering values, write validation.
//! - [`link`]: transports, one transaction with a timeout, error flattening, link statistics.
//! - [`placement`]: units moved to their VA or base offset; overlap checks across units.
//! - [`scheduler`]: the read plan (coalescing, gap splitting).
//! - [`engine`]: unit state, cache, the public handle; `engine::link_task`: one task per link.
//! - [`scan`]: finding units on a bus (probing slave ids, proposing profiles), over the
//!   command line's own transport or through a running link task.

pub mod codec;
pub mod engine;
pub mod link;
pub mod placement;
pub mod profile;
pub mod scan;
pub mod scheduler;

pub use engine::{
    EngineError, ModbusEngine, PointValue, RawValues, ScanError, UnitInfo, UnitSnapshot,
    UnitUpdate, WriteError, WriteOutcome, WriteStatus,
};
pub use link::{LinkStats, ModbusError};
pub use profile::{Profile, ProfileRegistry, Quality, RegKind};
