//! The one owner of the box's access state, and the only writer of the authorization index.
//!
//! Every input of the [`Index`] enters here and nowhere else:
//!
//! - the grants engine's [`AccessState`] (the applied bundle and the admitted installer tokens,
//!   both kept as the signed envelopes received and re-verified by [`GrantEngine::open`] on every
//!   start): [`Access::open`] builds the first index on it, [`Access::apply`] and
//!   [`Access::admit_login_token`] change it, and [`Access::sync_grants`] follows changes the
//!   engine made by itself;
//! - local delegations, which the delegation module re-verifies (device-key signature) from
//!   SQLite at start and after every change and hands over whole with [`Access::set_local`];
//! - business suspensions, which the business module reads and hands over with
//!   [`Access::set_suspended`].
//!
//! Each change rebuilds the whole index from the owner's inputs under one mutex and publishes it
//! as one immutable `Arc` (`Authz::install`, private to `authz` and so callable from this child
//! module only: no other module can swap an index in). Readers hold [`Access::authz`] or the
//! owner itself and never lock.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};

use time::OffsetDateTime;

use super::{Authz, Decision, Index, Inputs, Target};
use crate::access::{AccessState, Grant};
use crate::grants::{ApplyOutcome, GrantEngine, Kind, Rejection, VerifiedToken};
use crate::model::{BusinessId, Capability, GrantId, GroupId, SiteId, UnitId, UserId};

/// The access-state owner. Cheap to clone; every clone is the same owner.
#[derive(Clone)]
pub struct Access {
    inner: Arc<Inner>,
}

struct Inner {
    authz: Arc<Authz>,
    /// Everything the current index was built from. Changes serialize on it.
    inputs: Mutex<Inputs>,
    /// The engine whose state is in force (`None` for an owner over a fixed state: tools, tests).
    grants: Option<GrantEngine>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("seq", &self.index().seq)
            .finish_non_exhaustive()
    }
}

impl Access {
    /// An owner over `inputs` with no grants engine: its access state changes only through
    /// [`Access::set_state`] (tools and tests).
    pub fn new(inputs: Inputs) -> Access {
        Access::build(inputs, None)
    }

    /// The daemon's owner: over the state the grants engine re-verified at its opening (the
    /// stored bundle and installer tokens), this site and its unit inventory. Local delegations
    /// and suspensions follow when their modules open (before the API serves).
    pub fn open(
        grants: GrantEngine,
        site: SiteId,
        inventory: Vec<(UnitId, Option<GroupId>)>,
    ) -> Access {
        let inputs = Inputs {
            site: Some(site),
            state: grants.snapshot(),
            inventory,
            ..Inputs::default()
        };
        Access::build(inputs, Some(grants))
    }

    fn build(inputs: Inputs, grants: Option<GrantEngine>) -> Access {
        let authz = Arc::new(Authz::new(Inputs::default()));
        authz.install(Arc::new(Index::build(&inputs)));
        Access {
            inner: Arc::new(Inner {
                authz,
                inputs: Mutex::new(inputs),
                grants,
            }),
        }
    }

    /// The read-only handle for deciders (the API, the BMS server).
    pub fn authz(&self) -> Arc<Authz> {
        self.inner.authz.clone()
    }

    /// The current index (one atomic load).
    pub fn index(&self) -> Arc<Index> {
        self.inner.authz.index()
    }

    /// Decides against the current index.
    pub fn decide(
        &self,
        user: &UserId,
        cap: Capability,
        target: &Target,
        now: OffsetDateTime,
    ) -> Decision {
        self.inner.authz.decide(user, cap, target, now)
    }

    /// The grants engine in force, if any.
    pub fn grants(&self) -> Option<&GrantEngine> {
        self.inner.grants.as_ref()
    }

    fn lock(&self) -> MutexGuard<'_, Inputs> {
        self.inner
            .inputs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Rebuilds from `inputs` and publishes the new index as one value.
    fn publish(&self, inputs: &Inputs) -> Arc<Index> {
        let ix = Arc::new(Index::build(inputs));
        self.inner.authz.install(ix.clone());
        ix
    }

    /// Changes the inputs with `f`, rebuilds and publishes. For tools and tests that stage a
    /// state (an inventory, a revocation); the daemon changes state only through the typed calls.
    pub fn update(&self, f: impl FnOnce(&mut Inputs)) -> Arc<Index> {
        let mut inputs = self.lock();
        f(&mut inputs);
        self.publish(&inputs)
    }

    /// Publishes an access state that did not come from the engine (tools and tests). With an
    /// engine the engine's state is the only one: use [`Access::apply`].
    pub fn set_state(&self, state: Arc<AccessState>) -> Arc<Index> {
        self.update(|i| i.state = state)
    }

    /// Applies a signed envelope through the engine (blocking: call from `spawn_blocking`) and
    /// publishes the resulting index before returning, so a login or command right after a
    /// successful apply is judged by it.
    pub fn apply(
        &self,
        kind: Option<Kind>,
        bytes: &[u8],
        source: &str,
    ) -> Result<ApplyOutcome, Rejection> {
        let Some(grants) = self.grants() else {
            return Err(Rejection::new(
                crate::grants::Reason::Storage,
                "no grants engine on this box",
            ));
        };
        let outcome = grants.apply(kind, bytes, source)?;
        self.sync_grants();
        Ok(outcome)
    }

    /// Admits an installer token presented at the LAN login (blocking): the engine verifies it,
    /// keeps its envelope (re-verified on every start) and puts its user and grant into the
    /// access state; the new index is in force when this returns.
    pub fn admit_login_token(&self, envelope: &[u8]) -> Result<VerifiedToken, Rejection> {
        let Some(grants) = self.grants() else {
            return Err(Rejection::new(
                crate::grants::Reason::Storage,
                "no grants engine on this box",
            ));
        };
        let t = grants.admit_login_token(envelope)?;
        self.sync_grants();
        Ok(t)
    }

    /// Publishes the engine's current state unless it is in force already; returns whether it
    /// did. Serialized on the inputs, so an older state never replaces a newer one (the engine
    /// publishes a new `Arc` for every change; pointer identity tells them apart).
    pub fn sync_grants(&self) -> bool {
        let Some(grants) = self.grants() else {
            return false;
        };
        let mut inputs = self.lock();
        let current = grants.snapshot();
        if Arc::ptr_eq(&inputs.state, &current) {
            return false;
        }
        inputs.state = current;
        self.publish(&inputs);
        true
    }

    /// The full set of local delegations (each re-verified by the delegation module) and the ones
    /// revoked on this box.
    pub fn set_local(&self, local: Vec<Grant>, revoked: HashSet<GrantId>) -> Arc<Index> {
        self.update(|i| {
            i.local = local;
            i.local_revoked = revoked;
        })
    }

    /// The suspended businesses, each with the users it had when suspended. Rebuilds only when
    /// they differ from the ones in force; returns whether it did.
    pub fn set_suspended(&self, suspended: Vec<(BusinessId, Vec<UserId>)>) -> bool {
        let mut inputs = self.lock();
        if inputs.suspended == suspended {
            return false;
        }
        inputs.suspended = suspended;
        self.publish(&inputs);
        true
    }
}
