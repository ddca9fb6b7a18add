//! The scans the box has run or is running (`/scans`): at most one running at a time, the last
//! [`KEPT`] kept in memory with their progress and findings (a scan is an installer's tool, not
//! a record: its start and end are in the audit trail).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::ports::ScanFound;
use crate::model::{LinkId, UserId};

/// Scans kept (finished ones are dropped oldest first).
pub const KEPT: usize = 8;

/// Where a scan is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScanStatus {
    Running,
    Done,
    Cancelled,
    Failed,
}

/// What a scan has done so far.
#[derive(Debug, Clone)]
pub struct Progress {
    pub status: ScanStatus,
    pub probed: usize,
    pub found: Vec<ScanFound>,
    pub error: Option<String>,
    pub finished_at: Option<OffsetDateTime>,
}

/// One scan.
pub struct Scan {
    pub id: String,
    pub link: LinkId,
    pub from: u8,
    pub to: u8,
    pub timeout_ms: u64,
    pub started_by: UserId,
    pub started_at: OffsetDateTime,
    pub cancel: CancellationToken,
    pub progress: Mutex<Progress>,
}

impl Scan {
    pub fn total(&self) -> usize {
        usize::from(self.to.saturating_sub(self.from)) + 1
    }

    pub fn progress(&self) -> Progress {
        self.progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_progress(&self, f: impl FnOnce(&mut Progress)) {
        f(&mut self.progress.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

/// The scans of this box.
#[derive(Default)]
pub struct Scans {
    list: Mutex<VecDeque<Arc<Scan>>>,
}

impl Scans {
    /// Adds `scan` unless one is running (then returns the running one).
    pub fn start(&self, scan: Scan) -> Result<Arc<Scan>, Arc<Scan>> {
        let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(running) = list
            .iter()
            .find(|s| s.progress().status == ScanStatus::Running)
        {
            return Err(running.clone());
        }
        let scan = Arc::new(scan);
        list.push_front(scan.clone());
        list.truncate(KEPT);
        Ok(scan)
    }

    pub fn get(&self, id: &str) -> Option<Arc<Scan>> {
        let list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        list.iter().find(|s| s.id == id).cloned()
    }

    /// Newest first.
    pub fn all(&self) -> Vec<Arc<Scan>> {
        let list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        list.iter().cloned().collect()
    }
}
