//! The register maps and live behaviour of the simulated devices.
//!
//! The generator and the HVAC gateway are built from the vendors' documents, NOT from the
//! profiles in `config/profiles/`: the register tables below are typed in from the documents, so
//! a profile that reads the wrong register or decodes it wrongly fails the tests that read every
//! profile point from these simulators (`tests/modbus_profiles.rs`).
//!
//! Documents (see the profile files for the full references):
//! - DSE GenComm standard v2.156 and 55xGenComm V1.29: pages of 256 registers; page 3 status
//!   (768 manufacturer code 1, 769 model, 772 control mode), page 4 instrumentation (1024..),
//!   page 5 offset 128 engine operating state (1408), page 7 accumulated instrumentation (1798
//!   run time in seconds, 1808 starts), page 8 alarm nibbles (2048 count, 2049.. four 4-bit codes
//!   per register, first alarm in the top nibble), page 16 supported-function flags (4096-4103)
//!   and the control key plus ones' complement at 4104/4105 in one FC16 write (anything else:
//!   exception 07); DSE 056-051 Issue 3 for the key codes; every unimplemented register reads
//!   the type's "unimplemented" value (0xFFFF / 0x7FFF).
//! - CoolMasterNet PRM Rev 0.7 §4.5.3 and the "CoolMaster Modbus setup" support article: VA n
//!   occupies wire addresses 16n..16n+15 of every table; holding +0 mode, +1 fan, +2 set
//!   temperature x10, +3 on/off, +4 filter sign, +5 swing, +6 room temperature x10 (RO), +7
//!   malfunction code (RO), +8 wall controller lock bits (0, 1, 2, 7), +9 set temperature limits;
//!   discrete inputs +0 Therm_ON, +1 indoor communication failure; a read that starts on a
//!   reserved register answers exception 02, reserved registers inside a read answer 0xFFFF.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_modbus::{ExceptionCode, Request, Response};

use crate::modbus::profile::{Profile, RegKind};

/// What answers at a slave id.
#[derive(Debug, Clone)]
pub enum SimDevice {
    /// DSE generator controller with the page-8 ("old") alarm system (profile `dse-gencomm`).
    Generator,
    /// DSE generator controller with page-154 named alarms (profile `dse-gencomm-page154`).
    GeneratorPage154,
    /// CoolMasterNet gateway with one indoor unit at VA 1 (profile `coolmaster-va`).
    Hvac,
    /// CoolMasterNet gateway with indoor units at these VAs, all behind one slave id.
    CoolMaster(Vec<u16>),
    /// Eastron SDM630 energy meter (profile `eastron-sdm630`).
    Sdm630,
    /// A plain register map: every point of the profile, zero-initialised, writable where the
    /// profile says so.
    Profile(Arc<Profile>),
}

impl SimDevice {
    pub fn name(&self) -> String {
        match self {
            SimDevice::Generator => "generator".into(),
            SimDevice::GeneratorPage154 => "generator-page154".into(),
            SimDevice::Hvac => "hvac".into(),
            SimDevice::CoolMaster(vas) => format!(
                "coolmaster(va {})",
                vas.iter().map(u16::to_string).collect::<Vec<_>>().join(",")
            ),
            SimDevice::Sdm630 => "sdm630".into(),
            SimDevice::Profile(p) => p.name.clone(),
        }
    }
}

// ------------------------------------------------------------------------------------------
// DSE GenComm, as the documents state it.
// ------------------------------------------------------------------------------------------

/// GenComm wire address of a page offset.
const fn gc(page: u16, offset: u16) -> u16 {
    page * 256 + offset
}
const G_MANUFACTURER: u16 = gc(3, 0);
const G_MODEL: u16 = gc(3, 1);
const G_MODE: u16 = gc(3, 4);
const G_OIL_P: u16 = gc(4, 0);
const G_COOLANT: u16 = gc(4, 1);
const G_OIL_T: u16 = gc(4, 2);
const G_FUEL: u16 = gc(4, 3);
const G_ALT_V: u16 = gc(4, 4);
const G_BATT: u16 = gc(4, 5);
const G_RPM: u16 = gc(4, 6);
const G_FREQ: u16 = gc(4, 7);
const G_L1N: u16 = gc(4, 8);
const G_L1A: u16 = gc(4, 20);
const G_L1W: u16 = gc(4, 28);
const G_ENGINE_STATE: u16 = gc(5, 128);
const G_RUN_TIME: u16 = gc(7, 6);
const G_STARTS: u16 = gc(7, 16);
const G_FLAGS: u16 = gc(16, 0);
const G_KEY: u16 = gc(16, 8);

/// Engine operating state codes (page 5 offset 128).
pub const ENGINE_STOPPED: u16 = 0;
pub const ENGINE_PRE_START: u16 = 1;
pub const ENGINE_WARMING_UP: u16 = 2;
pub const ENGINE_RUNNING: u16 = 3;
pub const ENGINE_COOLING_DOWN: u16 = 4;

/// Control modes (page 3 offset 4).
pub const MODE_STOP: u16 = 0;
pub const MODE_AUTO: u16 = 1;
pub const MODE_MANUAL: u16 = 2;
pub const MODE_TEST_ON_LOAD: u16 = 3;

/// Alarm condition codes (page 8): 1 not active, 3 shutdown, 15 unimplemented.
pub const ALARM_NOT_ACTIVE: u16 = 1;

/// How long the simulated engine stays in pre-start, warming up and cooling down.
const PRE_START: Duration = Duration::from_millis(300);
const WARM_UP: Duration = Duration::from_millis(300);
const COOL_DOWN: Duration = Duration::from_millis(500);

/// System control function codes this controller implements [056-051]: modes 0-4, start 5,
/// mute 6, panel reset 7, telemetry start/stop 32/33, reset alarm codes 34, clear telemetry
/// flag 35.
const SUPPORTED_FUNCTIONS: [u16; 12] = [0, 1, 2, 3, 4, 5, 6, 7, 32, 33, 34, 35];

/// Extended exception "illegal value written to register" [55x p.52].
const GENCOMM_REFUSED: u8 = 7;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    Stopped,
    PreStart { since: Instant },
    WarmingUp { since: Instant },
    Running,
    CoolingDown { since: Instant },
}

// ------------------------------------------------------------------------------------------
// CoolMasterNet, as the documents state it.
// ------------------------------------------------------------------------------------------

/// SDM630 readings at their start addresses [SDM630Modbus MID V2 §1.2.1]: L1-L3 volts, currents,
/// powers, total system power, total power factor, frequency, import, export and total kWh.
pub const SDM630_VALUES: [(u16, f32); 15] = [
    (0x00, 230.5),
    (0x02, 229.75),
    (0x04, 231.0),
    (0x06, 1.5),
    (0x08, 2.25),
    (0x0A, 0.5),
    (0x0C, 345.0),
    (0x0E, 517.5),
    (0x10, 115.5),
    (0x34, 978.0),
    (0x3E, 0.98),
    (0x46, 50.0),
    (0x48, 1234.5),
    (0x4A, 12.25),
    (0x156, 1246.75),
];

const VA_STRIDE: u16 = 16;
const H_MODE: u16 = 0;
const H_FAN: u16 = 1;
const H_SET: u16 = 2;
const H_ON: u16 = 3;
const H_FILTER: u16 = 4;
const H_SWING: u16 = 5;
const H_ROOM: u16 = 6;
const H_FAILURE: u16 = 7;
const H_LOCK: u16 = 8;
const H_LIMITS: u16 = 9;
const D_THERM_ON: u16 = 0;
const D_COMM_FAILURE: u16 = 1;
const LOCK_BITS: u16 = 0x0087;

#[derive(Debug)]
struct IndoorUnit {
    room: f64,
    /// The indoor unit stopped answering the gateway: values freeze, the failure input is set.
    failed: bool,
}

#[derive(Debug)]
enum Model {
    Generator {
        engine: Engine,
        /// Electrical output ramps 0 → 1 while running.
        ramp: f64,
        run_secs: f64,
        starts: u32,
    },
    CoolMaster {
        units: BTreeMap<u16, IndoorUnit>,
    },
    Static,
}

pub(crate) struct DeviceState {
    map: HashMap<(RegKind, u16), u16>,
    writable: HashSet<(RegKind, u16)>,
    /// Registers a test forced with `set_register`: the live model no longer drives them (a
    /// sensor stuck at a reserved value stays there).
    pinned: HashSet<(RegKind, u16)>,
    model: Model,
    last: Instant,
}

impl DeviceState {
    pub(crate) fn new(device: &SimDevice) -> DeviceState {
        let mut s = DeviceState {
            map: HashMap::new(),
            writable: HashSet::new(),
            pinned: HashSet::new(),
            model: Model::Static,
            last: Instant::now(),
        };
        match device {
            SimDevice::Generator => s.init_generator(8, 4510),
            SimDevice::GeneratorPage154 => s.init_generator(154, 7320),
            SimDevice::Hvac => s.init_coolmaster(&[1]),
            SimDevice::CoolMaster(vas) => s.init_coolmaster(vas),
            SimDevice::Sdm630 => s.init_sdm630(),
            SimDevice::Profile(p) => s.init_profile(p),
        }
        s.tick();
        s
    }

    fn init_profile(&mut self, p: &Profile) {
        for pt in &p.points {
            for a in pt.address..=pt.address.saturating_add(pt.width() - 1) {
                self.map.insert((pt.kind, a), 0);
                if pt.writable() {
                    self.writable.insert((pt.kind, a));
                }
            }
        }
        for c in &p.commands {
            for w in &c.writes {
                for (i, _) in w.values.iter().enumerate() {
                    let a = w.address.saturating_add(u16::try_from(i).unwrap_or(0));
                    self.map.insert((w.kind, a), 0);
                    self.writable.insert((w.kind, a));
                }
            }
        }
        for sig in &p.signature {
            self.map.insert((sig.kind, sig.address), sig.value);
        }
    }

    /// A GenComm controller: pages 3, 4, 5, 7 and the alarm page are implemented (every register
    /// of them answers; unimplemented ones read 0xFFFF), page 16 registers 0-7 are readable and
    /// 8-9 writable only with a control key.
    fn init_generator(&mut self, alarm_page: u16, model: u16) {
        let h = RegKind::Holding;
        for page in [3, 4, 5, 7, alarm_page] {
            for off in 0..256 {
                self.map.insert((h, gc(page, off)), 0xFFFF);
            }
        }
        let mut flags = [0u16; 8];
        for code in SUPPORTED_FUNCTIONS {
            // Function 0 is the most significant bit of register 0 (the order the Victron
            // dbus-modbus-client driver reads on real controllers).
            if let Some(f) = flags.get_mut(usize::from(code / 16)) {
                *f |= 0x8000 >> (code % 16);
            }
        }
        for (i, f) in flags.iter().enumerate() {
            self.map
                .insert((h, G_FLAGS + u16::try_from(i).unwrap_or(0)), *f);
        }
        self.writable.insert((h, G_KEY));
        self.writable.insert((h, G_KEY + 1));
        for (a, v) in [
            (G_MANUFACTURER, 1),
            (G_MODEL, model),
            (gc(3, 2), 0),
            (gc(3, 3), 12345),
            (G_MODE, MODE_STOP),
            (G_OIL_T, 0x7FFF),
            (G_FUEL, 78),
        ] {
            self.map.insert((h, a), v);
        }
        // Named alarms: page 8 has 28 in offsets 1-7, page 154 (61xx/72xx/73xx/74xx MkII,
        // 8xxx order) at least 24 in offsets 1-6; all implemented and not active.
        let (count, regs) = if alarm_page == 8 { (28, 7) } else { (24, 6) };
        self.map.insert((h, gc(alarm_page, 0)), count);
        for off in 1..=regs {
            self.map.insert((h, gc(alarm_page, off)), 0x1111);
        }
        self.model = Model::Generator {
            engine: Engine::Stopped,
            ramp: 0.0,
            run_secs: 1234.0 * 3600.0,
            starts: 87,
        };
    }

    /// An SDM630 as its manual states it: input registers (FC04) of 32-bit floats, high word
    /// first, at the protocol start addresses of table 1.2.1; the other input registers of the
    /// tables read zero.
    fn init_sdm630(&mut self) {
        for a in (0..=0x4F).chain(0x150..=0x15F) {
            self.map.insert((RegKind::Input, a), 0);
        }
        for (a, v) in SDM630_VALUES {
            let bits = v.to_bits();
            self.map.insert((RegKind::Input, a), (bits >> 16) as u16);
            self.map
                .insert((RegKind::Input, a + 1), (bits & 0xFFFF) as u16);
        }
    }

    fn init_coolmaster(&mut self, vas: &[u16]) {
        let mut units = BTreeMap::new();
        for &va in vas {
            let base = va.saturating_mul(VA_STRIDE);
            let h = RegKind::Holding;
            for (off, v) in [
                (H_MODE, 0),
                (H_FAN, 3),
                (H_SET, 240),
                (H_ON, 0),
                (H_FILTER, 0),
                (H_SWING, 5),
                (H_ROOM, 268),
                (H_FAILURE, 0),
                (H_LOCK, 0),
                (H_LIMITS, 0),
            ] {
                self.map.insert((h, base + off), v);
            }
            for off in [H_MODE, H_FAN, H_SET, H_ON, H_FILTER, H_SWING, H_LOCK] {
                self.writable.insert((h, base + off));
            }
            for off in 0..4 {
                self.map.insert((RegKind::Discrete, base + off), 0);
            }
            // Input register +0: the UID Ln.XYY (line 1, X = 1, YY = VA).
            self.map
                .insert((RegKind::Input, base), 0x1100 | (va & 0xFF));
            units.insert(
                va,
                IndoorUnit {
                    room: 26.8,
                    failed: false,
                },
            );
        }
        self.model = Model::CoolMaster { units };
    }

    pub(crate) fn get(&self, kind: RegKind, addr: u16) -> Option<u16> {
        self.map.get(&(kind, addr)).copied()
    }

    pub(crate) fn set(&mut self, kind: RegKind, addr: u16, v: u16) {
        self.map.insert((kind, addr), v);
        if let Model::Generator { .. } = self.model {
            self.pinned.insert((kind, addr));
        }
        if let Model::CoolMaster { units } = &mut self.model {
            let (va, off) = (addr / VA_STRIDE, addr % VA_STRIDE);
            if let Some(u) = units.get_mut(&va) {
                match (kind, off) {
                    (RegKind::Holding, H_ROOM) => u.room = f64::from(v as i16) / 10.0,
                    (RegKind::Discrete, D_COMM_FAILURE) => u.failed = v != 0,
                    _ => {}
                }
            }
        }
    }

    /// Makes the indoor unit at `va` stop (or resume) answering its gateway.
    pub(crate) fn set_indoor_failure(&mut self, va: u16, failed: bool) -> bool {
        self.set(
            RegKind::Discrete,
            va.saturating_mul(VA_STRIDE) + D_COMM_FAILURE,
            u16::from(failed),
        );
        matches!(&self.model, Model::CoolMaster { units } if units.contains_key(&va))
    }

    pub(crate) fn unmap(&mut self, kind: RegKind, addr: u16) {
        self.map.remove(&(kind, addr));
        self.writable.remove(&(kind, addr));
    }

    fn put(&mut self, addr: u16, v: u16) {
        self.map.insert((RegKind::Holding, addr), v);
    }

    fn put32(&mut self, addr: u16, v: u32) {
        self.put(addr, (v >> 16) as u16);
        self.put(addr + 1, (v & 0xFFFF) as u16);
    }

    /// Advances the live behaviour to now.
    pub(crate) fn tick(&mut self) {
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        let mut regs: Vec<(RegKind, u16, u16)> = Vec::new();
        let mut regs32: Vec<(u16, u32)> = Vec::new();
        let map = &self.map;
        match &mut self.model {
            Model::Generator {
                engine,
                ramp,
                run_secs,
                starts,
            } => {
                let next = match *engine {
                    Engine::PreStart { since } if now.duration_since(since) >= PRE_START => {
                        Some(Engine::WarmingUp { since: now })
                    }
                    Engine::WarmingUp { since } if now.duration_since(since) >= WARM_UP => {
                        Some(Engine::Running)
                    }
                    Engine::CoolingDown { since } if now.duration_since(since) >= COOL_DOWN => {
                        Some(Engine::Stopped)
                    }
                    _ => None,
                };
                if let Some(n) = next {
                    *engine = n;
                }
                let turning = matches!(
                    *engine,
                    Engine::WarmingUp { .. } | Engine::Running | Engine::CoolingDown { .. }
                );
                if turning {
                    *run_secs += dt;
                    *ramp = (*ramp + dt / 0.5).min(1.0);
                } else {
                    *ramp = (*ramp - dt * 4.0).max(0.0);
                }
                let r = *ramp;
                let h = RegKind::Holding;
                regs.push((
                    h,
                    G_ENGINE_STATE,
                    match engine {
                        Engine::Stopped => ENGINE_STOPPED,
                        Engine::PreStart { .. } => ENGINE_PRE_START,
                        Engine::WarmingUp { .. } => ENGINE_WARMING_UP,
                        Engine::Running => ENGINE_RUNNING,
                        Engine::CoolingDown { .. } => ENGINE_COOLING_DOWN,
                    },
                ));
                let on_load = matches!(*engine, Engine::Running);
                regs.push((h, G_RPM, (1500.0 * r) as u16));
                regs.push((h, G_FREQ, (500.0 * r) as u16));
                regs.push((h, G_OIL_P, (420.0 * r) as u16));
                regs.push((h, G_ALT_V, if turning { 140 } else { 0 }));
                regs.push((h, G_BATT, if turning { 138 } else { 131 }));
                regs.push((h, G_COOLANT, (21.0 + 64.0 * r) as u16));
                regs32.push((G_L1N, (2301.0 * r) as u32));
                regs32.push((G_L1A, if on_load { (412.0 * r) as u32 } else { 0 }));
                regs32.push((G_L1W, if on_load { (9_500.0 * r) as u32 } else { 0 }));
                regs32.push((G_RUN_TIME, *run_secs as u32));
                regs32.push((G_STARTS, *starts));
            }
            Model::CoolMaster { units } => {
                for (va, u) in units.iter_mut() {
                    let base = va.saturating_mul(VA_STRIDE);
                    let failed = map
                        .get(&(RegKind::Discrete, base + D_COMM_FAILURE))
                        .is_some_and(|v| *v != 0);
                    u.failed = failed;
                    if failed {
                        // The gateway keeps serving the last values it got.
                        continue;
                    }
                    let on = map.get(&(RegKind::Holding, base + H_ON)).copied() == Some(1);
                    let set = f64::from(
                        map.get(&(RegKind::Holding, base + H_SET))
                            .copied()
                            .unwrap_or(240) as i16,
                    ) / 10.0;
                    let (target, rate) = if on { (set, 0.2) } else { (28.0, 0.02) };
                    let step = rate * dt;
                    if (u.room - target).abs() <= step {
                        u.room = target;
                    } else if u.room < target {
                        u.room += step;
                    } else {
                        u.room -= step;
                    }
                    regs.push((
                        RegKind::Holding,
                        base + H_ROOM,
                        ((u.room * 10.0).round() as i16) as u16,
                    ));
                    let demand = on && (u.room - set).abs() > 0.5;
                    regs.push((RegKind::Discrete, base + D_THERM_ON, u16::from(demand)));
                }
            }
            Model::Static => {}
        }
        for (k, a, v) in regs {
            if !self.pinned.contains(&(k, a)) {
                self.map.insert((k, a), v);
            }
        }
        for (a, v) in regs32 {
            if !self.pinned.contains(&(RegKind::Holding, a)) {
                self.put32(a, v);
            }
        }
    }

    fn read(&self, kind: RegKind, addr: u16, cnt: u16) -> Result<Vec<u16>, ExceptionCode> {
        if cnt == 0 || cnt > kind.max_read() {
            return Err(ExceptionCode::IllegalDataValue);
        }
        if let Model::CoolMaster { .. } = self.model {
            // PRM p.12: a read must start on a readable register; reserved ones inside the
            // range answer 0xFFFF (registers) or 0 (bits).
            if self.get(kind, addr).is_none() {
                return Err(ExceptionCode::IllegalDataAddress);
            }
            let filler = if kind.is_bit() { 0 } else { 0xFFFF };
            return (0..cnt)
                .map(|i| {
                    addr.checked_add(i)
                        .map(|a| self.get(kind, a).unwrap_or(filler))
                        .ok_or(ExceptionCode::IllegalDataAddress)
                })
                .collect();
        }
        (0..cnt)
            .map(|i| {
                addr.checked_add(i)
                    .and_then(|a| self.get(kind, a))
                    .ok_or(ExceptionCode::IllegalDataAddress)
            })
            .collect()
    }

    fn check_writable(&self, kind: RegKind, addr: u16, n: usize) -> Result<(), ExceptionCode> {
        for i in 0..n {
            let a = u16::try_from(i)
                .ok()
                .and_then(|i| addr.checked_add(i))
                .ok_or(ExceptionCode::IllegalDataAddress)?;
            if !self.writable.contains(&(kind, a)) {
                return Err(ExceptionCode::IllegalDataAddress);
            }
        }
        Ok(())
    }

    /// Device-specific checks and side effects of a register write.
    fn write_regs(
        &mut self,
        addr: u16,
        values: &[u16],
        multiple: bool,
    ) -> Result<(), ExceptionCode> {
        match self.model {
            Model::Generator { .. } => {
                // Page 16: key and complement in ONE function-16 write to offsets 8-9; any other
                // write is refused with extended exception 07 and has no effect [55x p.52].
                let (true, G_KEY, [key, comp]) = (multiple, addr, values) else {
                    return Err(ExceptionCode::new(GENCOMM_REFUSED));
                };
                if key ^ comp != 0xFFFF {
                    return Err(ExceptionCode::new(GENCOMM_REFUSED));
                }
                return self.control_key(*key);
            }
            Model::CoolMaster { .. } => {
                self.check_writable(RegKind::Holding, addr, values.len())?;
                let mut out = Vec::new();
                for (i, v) in values.iter().enumerate() {
                    let a = addr + u16::try_from(i).unwrap_or(0);
                    let ok = match a % VA_STRIDE {
                        H_MODE => matches!(*v, 0..=6 | 8..=11),
                        H_FAN => matches!(*v, 0..=5 | 7..=9),
                        H_SET => (100..=350).contains(&(*v as i16)),
                        H_ON | H_FILTER => *v <= 1,
                        H_SWING => *v <= 6,
                        H_LOCK => *v & !LOCK_BITS == 0,
                        _ => false,
                    };
                    if !ok {
                        return Err(ExceptionCode::IllegalDataValue);
                    }
                    // The filter sign is set by the unit and only cleared remotely.
                    if !(a % VA_STRIDE == H_FILTER && *v == 1) {
                        out.push((a, *v));
                    }
                }
                for (a, v) in out {
                    self.put(a, v);
                }
                return Ok(());
            }
            Model::Static => {}
        }
        self.check_writable(RegKind::Holding, addr, values.len())?;
        for (i, v) in values.iter().enumerate() {
            self.put(addr + u16::try_from(i).unwrap_or(0), *v);
        }
        Ok(())
    }

    fn supported(&self, code: u16) -> bool {
        let reg = self.get(RegKind::Holding, G_FLAGS + code / 16).unwrap_or(0);
        code < 128 && reg & (0x8000 >> (code % 16)) != 0
    }

    fn control_key(&mut self, key: u16) -> Result<(), ExceptionCode> {
        let Some(code) = key.checked_sub(35700).filter(|c| self.supported(*c)) else {
            return Err(ExceptionCode::new(GENCOMM_REFUSED));
        };
        let now = Instant::now();
        let mode = self.get(RegKind::Holding, G_MODE).unwrap_or(MODE_STOP);
        let mut new_mode = None;
        let mut reset_alarm_codes = false;
        let Model::Generator { engine, starts, .. } = &mut self.model else {
            return Err(ExceptionCode::IllegalDataAddress);
        };
        let stopped = *engine == Engine::Stopped;
        match code {
            0 => {
                // Stop mode stops the engine at once (no cooling down).
                new_mode = Some(MODE_STOP);
                *engine = Engine::Stopped;
            }
            1..=4 => new_mode = Some(code),
            // "Start engine if in manual or test modes"; in other modes the key is accepted and
            // ignored. Telemetry start (32) is honoured in auto mode only.
            5 if matches!(mode, MODE_MANUAL | MODE_TEST_ON_LOAD | 6) && stopped => {
                *engine = Engine::PreStart { since: now };
                *starts += 1;
            }
            32 if mode == MODE_AUTO && stopped => {
                *engine = Engine::PreStart { since: now };
                *starts += 1;
            }
            33 if mode == MODE_AUTO && !stopped => *engine = Engine::CoolingDown { since: now },
            34 => reset_alarm_codes = true,
            // 5/32/33 outside their modes, 6 mute, 7 panel reset button (none fitted), 35 clear
            // telemetry flag: no state here.
            _ => {}
        }
        let starts = *starts;
        self.put32(G_STARTS, starts);
        if let Some(m) = new_mode {
            self.put(G_MODE, m);
        }
        if reset_alarm_codes {
            // Function 34 resets every alarm condition code that can be reset: latched
            // warnings, shutdowns and electrical trips (2, 3, 4) become "not active".
            for page in [8u16, 154] {
                let count = self.get(RegKind::Holding, gc(page, 0)).unwrap_or(0xFFFF);
                if count == 0xFFFF {
                    continue;
                }
                for off in 1..=count.div_ceil(4) {
                    let a = gc(page, off);
                    let Some(v) = self.get(RegKind::Holding, a) else {
                        continue;
                    };
                    let mut out = 0;
                    for shift in [12, 8, 4, 0] {
                        let n = (v >> shift) & 0xF;
                        let n = if matches!(n, 2..=4) {
                            ALARM_NOT_ACTIVE
                        } else {
                            n
                        };
                        out |= n << shift;
                    }
                    self.put(a, out);
                }
            }
        }
        Ok(())
    }

    pub(crate) fn apply(&mut self, req: Request<'static>) -> Result<Response, ExceptionCode> {
        let bits = |w: Vec<u16>| w.into_iter().map(|v| v != 0).collect::<Vec<bool>>();
        match req {
            Request::ReadCoils(a, n) => {
                Ok(Response::ReadCoils(bits(self.read(RegKind::Coil, a, n)?)))
            }
            Request::ReadDiscreteInputs(a, n) => Ok(Response::ReadDiscreteInputs(bits(
                self.read(RegKind::Discrete, a, n)?,
            ))),
            Request::ReadHoldingRegisters(a, n) => Ok(Response::ReadHoldingRegisters(self.read(
                RegKind::Holding,
                a,
                n,
            )?)),
            Request::ReadInputRegisters(a, n) => Ok(Response::ReadInputRegisters(self.read(
                RegKind::Input,
                a,
                n,
            )?)),
            Request::WriteSingleCoil(a, v) => {
                self.check_writable(RegKind::Coil, a, 1)?;
                self.map.insert((RegKind::Coil, a), u16::from(v));
                Ok(Response::WriteSingleCoil(a, v))
            }
            Request::WriteMultipleCoils(a, v) => {
                if v.is_empty() || v.len() > 1968 {
                    return Err(ExceptionCode::IllegalDataValue);
                }
                self.check_writable(RegKind::Coil, a, v.len())?;
                for (i, b) in v.iter().enumerate() {
                    self.map.insert(
                        (RegKind::Coil, a + u16::try_from(i).unwrap_or(0)),
                        u16::from(*b),
                    );
                }
                Ok(Response::WriteMultipleCoils(
                    a,
                    u16::try_from(v.len()).unwrap_or(0),
                ))
            }
            Request::WriteSingleRegister(a, v) => {
                self.write_regs(a, &[v], false)?;
                Ok(Response::WriteSingleRegister(a, v))
            }
            Request::WriteMultipleRegisters(a, v) => {
                if v.is_empty() || v.len() > 123 {
                    return Err(ExceptionCode::IllegalDataValue);
                }
                self.write_regs(a, &v, true)?;
                Ok(Response::WriteMultipleRegisters(
                    a,
                    u16::try_from(v.len()).unwrap_or(0),
                ))
            }
            Request::ReadDeviceIdentification(_, _) => match self.model {
                // The generator controller identifies itself (FC43/14); the HVAC gateway does not.
                Model::Generator { .. } => {
                    use tokio_modbus::prelude::{
                        ConformityLevel, DeviceIdObject, ReadCode, ReadDeviceIdentificationResponse,
                    };
                    let obj = |id, v: &'static str| DeviceIdObject {
                        id,
                        value: tokio_modbus::bytes::Bytes::from_static(v.as_bytes()),
                    };
                    Ok(Response::ReadDeviceIdentification(
                        ReadDeviceIdentificationResponse {
                            read_code: ReadCode::Basic,
                            conformity_level: ConformityLevel::BasicIdentificationStreamOnly,
                            more_follows: false,
                            next_object_id: 0,
                            device_id_objects: vec![
                                obj(0, "Deep Sea Electronics"),
                                obj(1, "GenComm controller (sitegate sim)"),
                                obj(2, "1.0"),
                            ],
                        },
                    ))
                }
                _ => Err(ExceptionCode::IllegalFunction),
            },
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }
}
