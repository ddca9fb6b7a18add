//! The one owner of the box's access state, and the only writer of the authorization index.
//!
//! Every input of the [`Index`] enters here and nowhere else:
//!
//! - the grants engine's [`AccessState`] (the applied bundle and the admitted installer tokens,
//!   both kept as the signed envelopes received and re-verified by [`GrantEngine::open`] on every
//!   start): [`Access::open`] builds the first index on it, [`Access::apply`] and
//!   [`TokenAdmission::admit_login_token`] change it, and [`GrantsFollower::sync_grants`] follows
//!   changes the engine made by itself;
//! - local delegations, which the delegation module re-verifies (device-key signature) from
//!   SQLite at start and after every change and hands over whole with
//!   [`LocalWriter::set_local`];
//! - business suspensions, which the business module reads and hands over with
//!   [`SuspensionWriter::set_suspended`].
//!
//! Who may change which input is held by the compiler, not by convention. Each kind of input
//! has a capability, a value of a type defined here with private fields: [`LocalWriter`],
//! [`SuspensionWriter`], [`TokenAdmission`], [`GrantsFollower`]. [`Access::open`] makes the one
//! set of them ([`Writers`]) together with the owner ([`Access::staged`] likewise for an owner
//! without an engine); nothing else can make one, and none is `Clone`. The daemon's wiring moves each into the one component its kind of input belongs to
//! (the delegation service, the business service, the LAN login's token verifier, the task that
//! follows the engine), whose constructor demands it. Every other holder of an [`Access`] can
//! read, decide and [`Access::apply`] a signed envelope through the engine, and nothing else.
//! Each capability writes into the owner that made it, never into another one.
//!
//! An owner without a grants engine ([`Access::staged`], for tools and tests) comes with a
//! [`Stage`] that replaces its inputs at will; the daemon's owner never has one.
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

/// The capabilities that change an owner's inputs, one per kind of input, made once with the
/// owner. The daemon moves each into the one component its kind of input belongs to.
#[must_use = "an owner's inputs change only through its writers"]
pub struct Writers {
    /// For the delegation service (`delegation::Delegations::new`).
    pub local: LocalWriter,
    /// For the business service (`business::Businesses::new`).
    pub suspensions: SuspensionWriter,
    /// For the LAN login's token verifier (`app::adapters::GrantsTokens`).
    pub tokens: TokenAdmission,
    /// For the task that follows the grants engine's state (`app`).
    pub follower: GrantsFollower,
}

/// The right to hand the owner the local delegations ([`LocalWriter::set_local`]).
pub struct LocalWriter {
    owner: Access,
}

/// The right to hand the owner the business suspensions ([`SuspensionWriter::set_suspended`]).
pub struct SuspensionWriter {
    owner: Access,
}

/// The right to admit an installer token presented at the LAN login
/// ([`TokenAdmission::admit_login_token`]).
pub struct TokenAdmission {
    owner: Access,
}

/// The right to publish a state the grants engine reached by itself
/// ([`GrantsFollower::sync_grants`]).
pub struct GrantsFollower {
    owner: Access,
}

/// Replaces the inputs of an owner that has no grants engine, at will: tools and tests that
/// stage a state (an inventory, a revocation). Only [`Access::staged`] makes one.
#[derive(Clone)]
pub struct Stage {
    owner: Access,
}

impl Access {
    /// An owner over `inputs` with no grants engine and no writers: its access state never
    /// changes (tools and tests that judge one fixed state).
    pub fn new(inputs: Inputs) -> Access {
        Access::build(inputs, None)
    }

    /// An owner over `inputs` with no grants engine, its writers and a [`Stage`] that replaces
    /// its inputs (tools and tests).
    pub fn staged(inputs: Inputs) -> (Access, Writers, Stage) {
        let access = Access::build(inputs, None);
        let stage = Stage {
            owner: access.clone(),
        };
        let writers = access.writers();
        (access, writers, stage)
    }

    /// The daemon's owner: over the state the grants engine re-verified at its opening (the
    /// stored bundle and installer tokens), this site and its unit inventory, with the one set of
    /// its writers. Local delegations and suspensions follow when their modules open with their
    /// writers (before the API serves).
    pub fn open(
        grants: GrantEngine,
        site: SiteId,
        inventory: Vec<(UnitId, Option<GroupId>)>,
    ) -> (Access, Writers) {
        let inputs = Inputs {
            site: Some(site),
            state: grants.snapshot(),
            inventory,
            ..Inputs::default()
        };
        let access = Access::build(inputs, Some(grants));
        let writers = access.writers();
        (access, writers)
    }

    // INVARIANT: called once per owner, by its constructor: each kind of input has one writer.
    fn writers(&self) -> Writers {
        Writers {
            local: LocalWriter {
                owner: self.clone(),
            },
            suspensions: SuspensionWriter {
                owner: self.clone(),
            },
            tokens: TokenAdmission {
                owner: self.clone(),
            },
            follower: GrantsFollower {
                owner: self.clone(),
            },
        }
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

    /// Changes the inputs with `f`, rebuilds and publishes.
    fn change(&self, f: impl FnOnce(&mut Inputs)) -> Arc<Index> {
        let mut inputs = self.lock();
        f(&mut inputs);
        self.publish(&inputs)
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

    fn admit_login_token(&self, envelope: &[u8]) -> Result<VerifiedToken, Rejection> {
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

    fn sync_grants(&self) -> bool {
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

    fn set_local(&self, local: Vec<Grant>, revoked: HashSet<GrantId>) -> Arc<Index> {
        self.change(|i| {
            i.local = local;
            i.local_revoked = revoked;
        })
    }

    fn set_suspended(&self, suspended: Vec<(BusinessId, Vec<UserId>)>) -> bool {
        let mut inputs = self.lock();
        if inputs.suspended == suspended {
            return false;
        }
        inputs.suspended = suspended;
        self.publish(&inputs);
        true
    }
}

/// Unit tests inside the crate stage any state on any owner.
#[cfg(test)]
impl Access {
    pub(crate) fn update(&self, f: impl FnOnce(&mut Inputs)) -> Arc<Index> {
        self.change(f)
    }

    pub(crate) fn set_state(&self, state: Arc<AccessState>) -> Arc<Index> {
        self.change(|i| i.state = state)
    }
}

impl LocalWriter {
    /// The owner this writes into.
    pub fn owner(&self) -> &Access {
        &self.owner
    }

    /// The full set of local delegations (each re-verified by the delegation module) and the ones
    /// revoked on this box.
    pub fn set_local(&self, local: Vec<Grant>, revoked: HashSet<GrantId>) -> Arc<Index> {
        self.owner.set_local(local, revoked)
    }
}

impl SuspensionWriter {
    /// The owner this writes into.
    pub fn owner(&self) -> &Access {
        &self.owner
    }

    /// The suspended businesses, each with the users it had when suspended. Rebuilds only when
    /// they differ from the ones in force; returns whether it did.
    pub fn set_suspended(&self, suspended: Vec<(BusinessId, Vec<UserId>)>) -> bool {
        self.owner.set_suspended(suspended)
    }
}

impl TokenAdmission {
    /// The owner this writes into.
    pub fn owner(&self) -> &Access {
        &self.owner
    }

    /// Admits an installer token presented at the LAN login (blocking): the engine verifies it,
    /// keeps its envelope (re-verified on every start) and puts its user and grant into the
    /// access state; the new index is in force when this returns.
    pub fn admit_login_token(&self, envelope: &[u8]) -> Result<VerifiedToken, Rejection> {
        self.owner.admit_login_token(envelope)
    }
}

impl GrantsFollower {
    /// Publishes the engine's current state unless it is in force already; returns whether it
    /// did. Serialized on the inputs, so an older state never replaces a newer one (the engine
    /// publishes a new `Arc` for every change; pointer identity tells them apart).
    pub fn sync_grants(&self) -> bool {
        self.owner.sync_grants()
    }
}

impl Stage {
    /// Changes the inputs with `f`, rebuilds and publishes.
    pub fn update(&self, f: impl FnOnce(&mut Inputs)) -> Arc<Index> {
        self.owner.change(f)
    }

    /// Publishes an access state that did not come from an engine.
    pub fn set_state(&self, state: Arc<AccessState>) -> Arc<Index> {
        self.owner.change(|i| i.state = state)
    }
}
