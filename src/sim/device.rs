//! The register maps and live behaviour of the simulated devices.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use tokio_modbus::{ExceptionCode, Request, Response};

use crate::modbus::profile::{BUILTIN, Profile, RegKind};

/// What answers at a slave id.
#[derive(Debug, Clone)]
pub enum SimDevice {
    /// DSE-GenComm-style generator controller (profile `dse-gencomm`).
    Generator,
    /// CoolMasterNet-style HVAC indoor unit at VA 0 (profile `coolmaster-va`).
    Hvac,
    /// A plain register map: every point of the profile, zero-initialised, writable where the
    /// profile says so.
    Profile(Arc<Profile>),
}

impl SimDevice {
    pub fn name(&self) -> String {
        match self {
            SimDevice::Generator => "generator".into(),
            SimDevice::Hvac => "hvac".into(),
            SimDevice::Profile(p) => p.name.clone(),
        }
    }
}

// Generator registers (see config/profiles/dse-gencomm.toml).
const G_MODE: u16 = 772;
const G_STATE: u16 = 773;
const G_OIL_P: u16 = 1024;
const G_COOLANT: u16 = 1025;
const G_OIL_T: u16 = 1026;
const G_FUEL: u16 = 1027;
const G_ALT_V: u16 = 1028;
const G_BATT: u16 = 1029;
const G_RPM: u16 = 1030;
const G_FREQ: u16 = 1031;
const G_L1N: u16 = 1032;
const G_L1A: u16 = 1044;
const G_HOURS: u16 = 1798;
const G_STARTS: u16 = 1808;
const G_ALARMS: u16 = 2049;
const G_KEY: u16 = 4104;

// HVAC registers (coolmaster-va, VA 0).
const H_MODE: u16 = 0;
const H_FAN: u16 = 1;
const H_SET: u16 = 2;
const H_ON: u16 = 3;
const H_FILTER: u16 = 4;
const H_SWING: u16 = 5;
const H_ROOM: u16 = 6;
const H_LOCKS: u16 = 8;
const H_LOCK_SET: u16 = 9;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    Stopped,
    Cranking { since: Instant },
    Running,
    Cooling { since: Instant },
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
    Hvac {
        room: f64,
    },
    Static,
}

pub(crate) struct DeviceState {
    map: HashMap<(RegKind, u16), u16>,
    writable: HashSet<(RegKind, u16)>,
    model: Model,
    last: Instant,
}

fn builtin(name: &str) -> Option<Profile> {
    BUILTIN
        .iter()
        .find(|(n, _)| *n == name)
        .and_then(|(_, t)| Profile::parse(t).ok())
}

impl DeviceState {
    pub(crate) fn new(device: &SimDevice) -> DeviceState {
        let (profile, model) = match device {
            SimDevice::Generator => (
                builtin("dse-gencomm"),
                Model::Generator {
                    engine: Engine::Stopped,
                    ramp: 0.0,
                    run_secs: 1234.0 * 3600.0,
                    starts: 87,
                },
            ),
            SimDevice::Hvac => (builtin("coolmaster-va"), Model::Hvac { room: 26.8 }),
            SimDevice::Profile(p) => (Some((**p).clone()), Model::Static),
        };
        let mut s = DeviceState {
            map: HashMap::new(),
            writable: HashSet::new(),
            model,
            last: Instant::now(),
        };
        if let Some(p) = profile {
            for pt in &p.points {
                for a in pt.address..=pt.address.saturating_add(pt.width() - 1) {
                    s.map.insert((pt.kind, a), 0);
                    if pt.writable() {
                        s.writable.insert((pt.kind, a));
                    }
                }
            }
            for c in &p.commands {
                for w in &c.writes {
                    for (i, _) in w.values.iter().enumerate() {
                        let a = w.address.saturating_add(u16::try_from(i).unwrap_or(0));
                        s.map.insert((w.kind, a), 0);
                        s.writable.insert((w.kind, a));
                    }
                }
            }
            for sig in &p.signature {
                s.map.insert((sig.kind, sig.address), sig.value);
            }
        }
        match s.model {
            Model::Generator { .. } => {
                let h = RegKind::Holding;
                for (a, v) in [
                    (G_MODE, 0),
                    (G_OIL_T, 0x7FFF),
                    (G_FUEL, 78),
                    (G_BATT, 131),
                    (G_COOLANT, 21),
                    (2048, 6),
                    (G_ALARMS, 0x1111),
                    (G_ALARMS + 1, 0x11FF),
                    (6144, 115),
                    (6145, 60),
                ] {
                    s.map.insert((h, a), v);
                }
                s.map.insert((h, 769), 7320);
            }
            Model::Hvac { .. } => {
                let h = RegKind::Holding;
                // A VA block is 16 registers; all of them answer.
                for a in 0..16 {
                    s.map.entry((h, a)).or_insert(0);
                }
                for (a, v) in [
                    (H_MODE, 0),
                    (H_FAN, 3),
                    (H_SET, 240),
                    (H_ON, 0),
                    (H_SWING, 5),
                ] {
                    s.map.insert((h, a), v);
                }
            }
            Model::Static => {}
        }
        s.tick();
        s
    }

    pub(crate) fn get(&self, kind: RegKind, addr: u16) -> Option<u16> {
        self.map.get(&(kind, addr)).copied()
    }

    pub(crate) fn set(&mut self, kind: RegKind, addr: u16, v: u16) {
        self.map.insert((kind, addr), v);
        if let (Model::Hvac { room }, RegKind::Holding, H_ROOM) = (&mut self.model, kind, addr) {
            *room = f64::from(v as i16) / 10.0;
        }
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
        let cooldown = f64::from(self.get(RegKind::Holding, 6145).unwrap_or(60)).min(5.0);
        let mut regs: Vec<(u16, u16)> = Vec::new();
        let mut regs32: Vec<(u16, u32)> = Vec::new();
        match &mut self.model {
            Model::Generator {
                engine,
                ramp,
                run_secs,
                starts,
            } => {
                match *engine {
                    Engine::Cranking { since } if now.duration_since(since).as_secs_f64() > 0.5 => {
                        *engine = Engine::Running;
                    }
                    Engine::Cooling { since }
                        if now.duration_since(since).as_secs_f64() > cooldown.min(1.0) =>
                    {
                        *engine = Engine::Stopped;
                    }
                    _ => {}
                }
                let running = matches!(*engine, Engine::Running | Engine::Cooling { .. });
                if running {
                    *run_secs += dt;
                    *ramp = (*ramp + dt / 2.0).min(1.0);
                } else {
                    *ramp = (*ramp - dt).max(0.0);
                }
                let r = *ramp;
                regs.push((
                    G_STATE,
                    match engine {
                        Engine::Stopped => 0,
                        Engine::Cranking { .. } => 1,
                        Engine::Running => 2,
                        Engine::Cooling { .. } => 3,
                    },
                ));
                regs.push((G_RPM, (1500.0 * r) as u16));
                regs.push((G_FREQ, (500.0 * r) as u16));
                regs.push((G_OIL_P, (420.0 * r) as u16));
                regs.push((G_ALT_V, if running { 140 } else { 0 }));
                regs.push((G_BATT, if running { 138 } else { 131 }));
                regs.push((G_COOLANT, (21.0 + 64.0 * r) as u16));
                regs32.push((G_L1N, (2301.0 * r) as u32));
                regs32.push((G_L1A, if running { (412.0 * r) as u32 } else { 0 }));
                regs32.push((G_HOURS, *run_secs as u32));
                regs32.push((G_STARTS, *starts));
            }
            Model::Hvac { room } => {
                let on = self
                    .map
                    .get(&(RegKind::Holding, H_ON))
                    .copied()
                    .unwrap_or(0)
                    != 0;
                let set = f64::from(
                    self.map
                        .get(&(RegKind::Holding, H_SET))
                        .copied()
                        .unwrap_or(240) as i16,
                ) / 10.0;
                let (target, rate) = if on { (set, 0.2) } else { (28.0, 0.02) };
                let step = rate * dt;
                if (*room - target).abs() <= step {
                    *room = target;
                } else if *room < target {
                    *room += step;
                } else {
                    *room -= step;
                }
                regs.push((H_ROOM, ((*room * 10.0).round() as i16) as u16));
                let locks = self
                    .map
                    .get(&(RegKind::Holding, H_LOCK_SET))
                    .copied()
                    .unwrap_or(0);
                regs.push((H_LOCKS, locks & 7));
            }
            Model::Static => {}
        }
        for (a, v) in regs {
            self.put(a, v);
        }
        for (a, v) in regs32 {
            self.put32(a, v);
        }
    }

    fn read(&self, kind: RegKind, addr: u16, cnt: u16) -> Result<Vec<u16>, ExceptionCode> {
        if cnt == 0 || cnt > kind.max_read() {
            return Err(ExceptionCode::IllegalDataValue);
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
        self.check_writable(RegKind::Holding, addr, values.len())?;
        match self.model {
            Model::Generator { .. } if addr == G_KEY || addr == G_KEY + 1 => {
                // A control key must come as one FC16 write of key and complement.
                let (true, G_KEY, [key, comp]) = (multiple, addr, values) else {
                    return Err(ExceptionCode::IllegalDataValue);
                };
                if key ^ comp != 0xFFFF {
                    return Err(ExceptionCode::IllegalDataValue);
                }
                self.control_key(*key)?;
                return Ok(());
            }
            Model::Hvac { .. } => {
                for (i, v) in values.iter().enumerate() {
                    let a = addr + u16::try_from(i).unwrap_or(0);
                    let ok = match a {
                        H_MODE => *v <= 5,
                        H_FAN => *v <= 5,
                        H_SET => (160..=320).contains(&(*v as i16)),
                        H_ON | H_FILTER => *v <= 1,
                        H_SWING => *v <= 6,
                        H_LOCK_SET => *v <= 7,
                        _ => true,
                    };
                    if !ok {
                        return Err(ExceptionCode::IllegalDataValue);
                    }
                    if a == H_FILTER && *v == 1 {
                        // The sign is set by the unit, only cleared remotely: ignored.
                        return Ok(());
                    }
                }
            }
            Model::Generator { .. } => {
                if addr == 6144 && values.first().is_some_and(|v| !(90..=300).contains(v)) {
                    return Err(ExceptionCode::IllegalDataValue);
                }
            }
            Model::Static => {}
        }
        for (i, v) in values.iter().enumerate() {
            self.put(addr + u16::try_from(i).unwrap_or(0), *v);
        }
        Ok(())
    }

    fn control_key(&mut self, key: u16) -> Result<(), ExceptionCode> {
        let now = Instant::now();
        let mode = self.get(RegKind::Holding, G_MODE).unwrap_or(0);
        let mut new_mode = None;
        let mut reset = false;
        let Model::Generator { engine, starts, .. } = &mut self.model else {
            return Err(ExceptionCode::IllegalDataAddress);
        };
        match key {
            35700 => {
                new_mode = Some(0);
                if matches!(*engine, Engine::Running | Engine::Cranking { .. }) {
                    *engine = Engine::Cooling { since: now };
                }
            }
            35701 => new_mode = Some(1),
            35702 => new_mode = Some(2),
            35703 => new_mode = Some(3),
            35704 => new_mode = Some(4),
            35705 => {
                // Like the real controller, start is ignored outside manual/test modes.
                if matches!(mode, 2 | 3 | 6) && *engine == Engine::Stopped {
                    *engine = Engine::Cranking { since: now };
                    *starts += 1;
                }
            }
            35706 => {}
            35707 => reset = true,
            _ => return Err(ExceptionCode::IllegalDataValue),
        }
        if let Some(m) = new_mode {
            self.put(G_MODE, m);
        }
        if reset {
            self.put(G_ALARMS, 0x1111);
            self.put(G_ALARMS + 1, 0x11FF);
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
                                obj(1, "DSE7320 (sitegate sim)"),
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
