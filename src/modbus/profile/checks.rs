//! Validation of a raw profile: one named check per part of the file (name, signature, default
//! sentinels, virtual addressing, points, overlaps, commands), each adding its problems (with
//! their key paths) to a shared list and returning the valid form of its part.
//!
//! [`validate`] runs them in file order and builds a [`Profile`] only when no check found a
//! problem. A check never stops at the first problem: a profile author fixes a file in one pass.

use std::collections::{BTreeMap, HashSet};

use crate::model::Capability;

use super::{
    Command, CommandCondition, CommandConfirm, CommandSupport, CommandWrite, Point, Profile,
    Quality, RawCommand, RawCondition, RawConfirm, RawPoint, RawProfile, RawSentinel, RawSignature,
    RawSupport, RawWrite, RegKind, Sentinel, Signature, ValueType,
};

/// Every problem found so far, each a `key.path: message` line.
type Problems = Vec<String>;

/// Default sentinels by numeric type name (`u16`, `i16`, `u32`, `i32`).
type Defaults<'a> = BTreeMap<&'a str, &'a Vec<RawSentinel>>;

/// Validates a whole profile, collecting every problem.
pub(super) fn validate(raw: RawProfile) -> Result<Profile, Vec<String>> {
    let mut problems = Vec::new();
    check_name(&raw.name, &mut problems);
    let signature = check_signature(&raw.signature, &mut problems);
    let defaults = check_default_sentinels(&raw.default_sentinels, &mut problems);
    let va = check_va(raw.va_first, raw.va_stride, &mut problems);
    let max_read_registers = check_max_read_registers(raw.max_read_registers, &mut problems);
    let points = check_points(&raw.points, &defaults, &mut problems);
    // Indexed by position in `points` (skipped invalid points shift positions).
    let by_name = points
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name.clone(), i))
        .collect();
    check_overlaps(&points, &mut problems);
    let commands = check_commands(&raw.commands, &points, &mut problems);

    if problems.is_empty() {
        Ok(Profile {
            name: raw.name,
            description: raw.description,
            manufacturer: raw.manufacturer,
            signature,
            points,
            commands,
            va,
            max_read_registers,
            by_name,
        })
    } else {
        Err(problems)
    }
}

fn cap(s: &str, path: &str, problems: &mut Problems) -> Option<Capability> {
    match s.parse::<Capability>() {
        Ok(Capability::ManageUsers) => {
            problems.push(format!(
                "{path}: capability `manage_users` does not apply to a point (expected view, control, diagnose or configure)"
            ));
            None
        }
        Ok(c) => Some(c),
        Err(_) => {
            problems.push(format!(
                "{path}: unknown capability `{s}` (expected view, control, diagnose or configure)"
            ));
            None
        }
    }
}

fn addr(a: i64, width: u16, path: &str, problems: &mut Problems) -> Option<u16> {
    if a < 0 || a + i64::from(width) > 65536 {
        problems.push(format!(
            "{path}: address {a} is out of range (0..=65535, and the value must fit below 65536)"
        ));
        return None;
    }
    u16::try_from(a).ok()
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// `name`: lowercase letters, digits, `-`, `_`.
fn check_name(name: &str, problems: &mut Problems) {
    if !valid_name(name) {
        problems.push(format!(
            "name: `{name}` is not a valid profile name (lowercase letters, digits, `-`, `_`)"
        ));
    }
}

/// `[[signature]]`: registers that identify the model during a scan.
fn check_signature(raw: &[RawSignature], problems: &mut Problems) -> Vec<Signature> {
    let mut signature = Vec::new();
    for (i, s) in raw.iter().enumerate() {
        let path = format!("signature[{i}]");
        let kind = s
            .kind
            .parse::<RegKind>()
            .map_err(|e| problems.push(format!("{path}.kind: {e}")));
        let a = addr(s.address, 1, &path, problems);
        let v = u16::try_from(s.value).map_err(|_| {
            problems.push(format!("{path}.value: {} does not fit in 16 bits", s.value))
        });
        if let (Ok(kind), Some(address), Ok(value)) = (kind, a, v) {
            signature.push(Signature {
                kind,
                address,
                value,
            });
        }
    }
    signature
}

/// `[default_sentinels]`: keyed by numeric type only.
fn check_default_sentinels<'a>(
    raw: &'a BTreeMap<String, Vec<RawSentinel>>,
    problems: &mut Problems,
) -> Defaults<'a> {
    let mut defaults = BTreeMap::new();
    for (ty, list) in raw {
        if matches!(ty.as_str(), "u16" | "i16" | "u32" | "i32") {
            defaults.insert(ty.as_str(), list);
        } else {
            problems.push(format!(
                "default_sentinels.{ty}: not a numeric type (expected u16, i16, u32 or i32)"
            ));
        }
    }
    defaults
}

/// `va_first`/`va_stride`: both or neither, 16-bit, the stride non-zero.
fn check_va(
    first: Option<i64>,
    stride: Option<i64>,
    problems: &mut Problems,
) -> Option<(u16, u16)> {
    match (first, stride) {
        (None, None) => None,
        (Some(f), Some(s)) => match (u16::try_from(f), u16::try_from(s)) {
            (Ok(f), Ok(s)) if s > 0 => Some((f, s)),
            _ => {
                problems.push(format!(
                    "va_first/va_stride: {f}/{s} must be 16-bit numbers, the stride non-zero"
                ));
                None
            }
        },
        _ => {
            problems.push("va_first/va_stride: give both or neither".to_string());
            None
        }
    }
}

/// `max_read_registers`: 1 to 125 (the protocol's limit).
fn check_max_read_registers(raw: Option<i64>, problems: &mut Problems) -> Option<u16> {
    raw.and_then(|m| match u16::try_from(m) {
        Ok(m) if (1..=125).contains(&m) => Some(m),
        _ => {
            problems.push(format!("max_read_registers: {m} is not 1..=125"));
            None
        }
    })
}

/// `[[points]]`: unique names and each point's own checks; returns the valid points.
fn check_points(raw: &[RawPoint], defaults: &Defaults<'_>, problems: &mut Problems) -> Vec<Point> {
    let mut points = Vec::new();
    let mut names = HashSet::new();
    for (i, p) in raw.iter().enumerate() {
        let path = format!("points[{i}] (`{}`)", p.name);
        if !valid_name(&p.name) {
            problems.push(format!(
                "{path}: not a valid point name (lowercase letters, digits, `-`, `_`)"
            ));
        }
        if !names.insert(p.name.clone()) {
            problems.push(format!("{path}: duplicate point name"));
        }
        if let Some(point) = check_point(p, &path, defaults, problems) {
            points.push(point);
        }
    }
    points
}

/// One point: the point is valid only if none of its checks added a problem.
fn check_point(
    p: &RawPoint,
    path: &str,
    defaults: &Defaults<'_>,
    problems: &mut Problems,
) -> Option<Point> {
    let before = problems.len();
    let kind = match p.kind.parse::<RegKind>() {
        Ok(k) => k,
        Err(e) => {
            problems.push(format!("{path}.kind: {e}"));
            return None;
        }
    };
    if kind.is_bit() && p.ty != ValueType::Bool {
        problems.push(format!(
            "{path}.type: a {} point must be `bool`",
            kind.as_str()
        ));
    }
    let address = addr(p.address, p.ty.width(), path, problems)?;
    let (read, write) = check_point_access(p, kind, path, problems);
    let (scale, offset) = check_point_numbers(p, path, problems);
    let labels = check_point_labels(p, path, problems);
    let mask = check_point_mask(p, kind, path, problems);
    let bits = check_point_bits(p, path, problems);
    if p.unit_fault && (p.ty != ValueType::Bool || p.write.is_some()) {
        problems.push(format!(
            "{path}.unit_fault: only a read-only bool point can mark the unit faulty"
        ));
    }
    let sentinels = check_point_sentinels(p, defaults, path, problems);
    if problems.len() > before {
        return None;
    }
    let (Some(read), true) = (read, p.write.is_none() || write.is_some()) else {
        return None;
    };
    Some(Point {
        name: p.name.clone(),
        description: p.description.clone(),
        kind,
        address,
        ty: p.ty,
        scale,
        offset,
        unit: p.unit.clone(),
        word_order: p.word_order,
        min: p.min,
        max: p.max,
        labels,
        read,
        write,
        deadband: p.deadband,
        sentinels,
        mask,
        bits,
        unit_fault: p.unit_fault,
    })
}

/// `read` (default `view`) and `write` (absent: read-only; never `view`, never on a read-only
/// table).
fn check_point_access(
    p: &RawPoint,
    kind: RegKind,
    path: &str,
    problems: &mut Problems,
) -> (Option<Capability>, Option<Capability>) {
    let read = p.read.as_deref().map_or(Some(Capability::View), |s| {
        cap(s, &format!("{path}.read"), problems)
    });
    let write = match p.write.as_deref() {
        None => None,
        Some(s) => {
            let c = cap(s, &format!("{path}.write"), problems);
            if c == Some(Capability::View) {
                problems.push(format!(
                    "{path}.write: `view` cannot authorize a write (use control or configure)"
                ));
            }
            if !kind.writable() {
                problems.push(format!(
                    "{path}.write: a {} point cannot be written",
                    kind.as_str()
                ));
            }
            c
        }
    };
    (read, write)
}

/// `scale`, `offset`, `min`, `max`, `deadband`: finite, scale non-zero, min ≤ max, deadband ≥ 0.
/// Returns `(scale, offset)` with their defaults.
fn check_point_numbers(p: &RawPoint, path: &str, problems: &mut Problems) -> (f64, f64) {
    let scale = p.scale.unwrap_or(1.0);
    if !scale.is_finite() || scale == 0.0 {
        problems.push(format!("{path}.scale: must be a finite non-zero number"));
    }
    let offset = p.offset.unwrap_or(0.0);
    if !offset.is_finite() {
        problems.push(format!("{path}.offset: must be finite"));
    }
    if let (Some(lo), Some(hi)) = (p.min, p.max)
        && lo > hi
    {
        problems.push(format!("{path}: min {lo} is greater than max {hi}"));
    }
    for (field, v) in [("min", p.min), ("max", p.max), ("deadband", p.deadband)] {
        if let Some(v) = v
            && !v.is_finite()
        {
            problems.push(format!("{path}.{field}: must be finite"));
        }
    }
    if p.deadband.is_some_and(|d| d < 0.0) {
        problems.push(format!("{path}.deadband: must not be negative"));
    }
    (scale, offset)
}

/// `labels`: 16-bit keys, distinct non-empty labels, on enum points only (and every enum point
/// has them); an enum takes no scale or offset.
fn check_point_labels(p: &RawPoint, path: &str, problems: &mut Problems) -> BTreeMap<u16, String> {
    let mut labels = BTreeMap::new();
    for (k, v) in &p.labels {
        match k.parse::<u16>() {
            Ok(n) => {
                if v.is_empty() || labels.values().any(|l: &String| l == v) {
                    problems.push(format!("{path}.labels: label `{v}` is empty or repeated"));
                }
                labels.insert(n, v.clone());
            }
            Err(_) => problems.push(format!(
                "{path}.labels: key `{k}` is not a 16-bit unsigned number"
            )),
        }
    }
    if p.ty == ValueType::Enum && labels.is_empty() {
        problems.push(format!("{path}.labels: an enum point needs labels"));
    }
    if p.ty != ValueType::Enum && !labels.is_empty() {
        problems.push(format!("{path}.labels: only enum points have labels"));
    }
    if p.ty == ValueType::Enum && (p.scale.is_some() || p.offset.is_some()) {
        problems.push(format!("{path}: an enum point takes no scale or offset"));
    }
    labels
}

/// `mask`: non-zero, 16-bit, on a read-only 16-bit register point.
fn check_point_mask(
    p: &RawPoint,
    kind: RegKind,
    path: &str,
    problems: &mut Problems,
) -> Option<u16> {
    let m = p.mask?;
    match u16::try_from(m) {
        Ok(0) | Err(_) => {
            problems.push(format!("{path}.mask: must be a non-zero 16-bit value"));
            None
        }
        Ok(m) => {
            if kind.is_bit() || p.ty.width() != 1 {
                problems.push(format!(
                    "{path}.mask: only 16-bit register points take a mask"
                ));
            }
            if p.write.is_some() {
                problems.push(format!(
                    "{path}.mask: a masked point is read-only (no read-modify-write on a shared bus)"
                ));
            }
            Some(m)
        }
    }
}

/// `bits`: non-zero, 16-bit, on a writable unscaled u16 point.
fn check_point_bits(p: &RawPoint, path: &str, problems: &mut Problems) -> Option<u16> {
    let b = p.bits?;
    match u16::try_from(b) {
        Ok(b)
            if b != 0
                && p.ty == ValueType::U16
                && p.write.is_some()
                && p.scale.is_none()
                && p.offset.is_none() =>
        {
            Some(b)
        }
        _ => {
            problems.push(format!(
                "{path}.bits: only a writable, unscaled u16 point takes a non-zero 16-bit `bits`"
            ));
            None
        }
    }
}

/// `sentinels` (absent: the profile's defaults for an unmasked numeric point): raw values that
/// fit the point's registers, each with a sentinel quality.
fn check_point_sentinels(
    p: &RawPoint,
    defaults: &Defaults<'_>,
    path: &str,
    problems: &mut Problems,
) -> Vec<Sentinel> {
    let numeric = matches!(
        p.ty,
        ValueType::U16 | ValueType::I16 | ValueType::U32 | ValueType::I32
    ) && p.mask.is_none();
    let listed: &[RawSentinel] = match &p.sentinels {
        Some(v) => v,
        None if numeric => defaults.get(p.ty.as_str()).map_or(&[], |v| v.as_slice()),
        None => &[],
    };
    let mut sentinels = Vec::new();
    for s in listed {
        let max = if p.ty.width() == 2 {
            u32::MAX as i64
        } else {
            0xFFFF
        };
        if s.raw < 0 || s.raw > max {
            problems.push(format!(
                "{path}.sentinels: raw value {} does not fit the point's registers",
                s.raw
            ));
        } else if matches!(s.quality, Quality::Good | Quality::Stale | Quality::Unknown) {
            problems.push(format!(
                "{path}.sentinels: quality `{}` is not a sentinel quality",
                s.quality.as_str()
            ));
        } else {
            sentinels.push(Sentinel {
                raw: u32::try_from(s.raw).unwrap_or(0),
                quality: s.quality,
            });
        }
    }
    sentinels
}

/// Within a table, two points may share a register only if both are masked with disjoint bits.
fn check_overlaps(points: &[Point], problems: &mut Problems) {
    let mut sorted: Vec<&Point> = points.iter().collect();
    sorted.sort_by_key(|p| (p.kind, p.address));
    for (i, a) in sorted.iter().enumerate() {
        for b in sorted.iter().skip(i + 1) {
            if b.kind != a.kind || u32::from(b.address) >= a.end() {
                break;
            }
            let shared_ok = matches!((a.mask, b.mask), (Some(x), Some(y)) if x & y == 0);
            if !shared_ok {
                problems.push(format!(
                    "points `{}` and `{}` overlap at {} register {}",
                    a.name,
                    b.name,
                    a.kind.as_str(),
                    b.address
                ));
            }
        }
    }
}

/// `[[commands]]`: each command's own checks; returns the commands with a valid capability.
fn check_commands(raw: &[RawCommand], points: &[Point], problems: &mut Problems) -> Vec<Command> {
    let mut commands = Vec::new();
    for (i, c) in raw.iter().enumerate() {
        let path = format!("commands[{i}] (`{}`)", c.name);
        if !valid_name(&c.name) {
            problems.push(format!("{path}: not a valid command name"));
        }
        if raw.iter().take(i).any(|o| o.name == c.name) {
            problems.push(format!("{path}: duplicate command name"));
        }
        if let Some(command) = check_command(c, &path, points, problems) {
            commands.push(command);
        }
    }
    commands
}

/// One command after its name: capability, writes, and the points its conditions name.
fn check_command(
    c: &RawCommand,
    path: &str,
    points: &[Point],
    problems: &mut Problems,
) -> Option<Command> {
    let capability = cap(&c.capability, &format!("{path}.capability"), problems);
    if capability == Some(Capability::View) {
        problems.push(format!(
            "{path}.capability: `view` cannot authorize a command"
        ));
    }
    if c.writes.is_empty() {
        problems.push(format!("{path}.writes: a command needs at least one write"));
    }
    let writes: Vec<CommandWrite> = c
        .writes
        .iter()
        .enumerate()
        .filter_map(|(j, w)| check_command_write(w, &format!("{path}.writes[{j}]"), problems))
        .collect();
    if let Some(capability) = capability {
        check_command_reaches(capability, &writes, points, path, problems);
    }
    let supported_if = c
        .supported_if
        .as_ref()
        .and_then(|sup| check_supported_if(sup, points, path, problems));
    let allowed_when = c.allowed_when.as_ref().map(|a| {
        check_condition("allowed_when", a, points, path, problems);
        CommandCondition {
            point: a.point.clone(),
            values: a.values.clone(),
        }
    });
    let confirm = c
        .confirm
        .as_ref()
        .map(|a| check_confirm(a, points, path, problems));
    Some(Command {
        name: c.name.clone(),
        description: c.description.clone(),
        capability: capability?,
        writes,
        supported_if,
        allowed_when,
        confirm,
    })
}

/// One `writes[j]` entry: a writable table, 1 to 1968 bits or 123 registers that fit below
/// 65536, each value fitting its table.
fn check_command_write(w: &RawWrite, wpath: &str, problems: &mut Problems) -> Option<CommandWrite> {
    let kind = match w.kind.parse::<RegKind>() {
        Ok(k) if k.writable() => k,
        Ok(k) => {
            problems.push(format!("{wpath}.kind: a {} cannot be written", k.as_str()));
            return None;
        }
        Err(e) => {
            problems.push(format!("{wpath}.kind: {e}"));
            return None;
        }
    };
    let max = if kind.is_bit() { 1968 } else { 123 };
    if w.values.is_empty() || w.values.len() > max {
        problems.push(format!("{wpath}.values: between 1 and {max} values"));
        return None;
    }
    let n = u16::try_from(w.values.len()).unwrap_or(u16::MAX);
    let address = addr(w.address, n, wpath, problems)?;
    let limit = if kind.is_bit() { 1 } else { 0xFFFF };
    let mut values = Vec::new();
    for v in &w.values {
        if *v < 0 || *v > limit {
            problems.push(format!(
                "{wpath}.values: {v} does not fit a {}",
                kind.as_str()
            ));
        } else {
            values.push(u16::try_from(*v).unwrap_or(0));
        }
    }
    Some(CommandWrite {
        kind,
        address,
        values,
    })
}

/// A command must not be a cheaper path to registers a point guards with a higher write
/// capability (e.g. a `control` command writing a `configure` register).
fn check_command_reaches(
    capability: Capability,
    writes: &[CommandWrite],
    points: &[Point],
    path: &str,
    problems: &mut Problems,
) {
    for w in writes {
        let end = u32::from(w.address) + u32::try_from(w.values.len()).unwrap_or(u32::MAX);
        for p in points.iter().filter(|p| {
            p.kind == w.kind && u32::from(p.address) < end && p.end() > u32::from(w.address)
        }) {
            let Some(need) = p.write else { continue };
            if capability < need {
                problems.push(format!(
                    "{path}.capability: `{}` is below `{}`, which point `{}` needs to write the {} register(s) this command writes at {}",
                    capability.as_str(),
                    need.as_str(),
                    p.name,
                    w.kind.as_str(),
                    p.address
                ));
            }
        }
    }
}

/// `supported_if`: an unmasked u16 point and a non-zero 16-bit mask.
fn check_supported_if(
    sup: &RawSupport,
    points: &[Point],
    path: &str,
    problems: &mut Problems,
) -> Option<CommandSupport> {
    match points.iter().find(|p| p.name == sup.point) {
        Some(pt) if pt.ty == ValueType::U16 && pt.mask.is_none() => {}
        Some(_) => problems.push(format!(
            "{path}.supported_if.point: `{}` must be an unmasked u16 point",
            sup.point
        )),
        None => problems.push(format!(
            "{path}.supported_if.point: no point named `{}`",
            sup.point
        )),
    }
    match u16::try_from(sup.mask) {
        Ok(m) if m != 0 => Some(CommandSupport {
            point: sup.point.clone(),
            mask: m,
        }),
        _ => {
            problems.push(format!(
                "{path}.supported_if.mask: must be a non-zero 16-bit value"
            ));
            None
        }
    }
}

/// A condition on a point (`allowed_when`, `confirm`): the point exists, at least one value, and
/// on an enum point every value is one of its labels.
fn check_condition(
    field: &str,
    cond: &RawCondition,
    points: &[Point],
    path: &str,
    problems: &mut Problems,
) {
    check_point_values(field, &cond.point, &cond.values, points, path, problems);
}

fn check_point_values(
    field: &str,
    name: &str,
    values: &[String],
    points: &[Point],
    path: &str,
    problems: &mut Problems,
) {
    let Some(pt) = points.iter().find(|p| p.name == name) else {
        problems.push(format!("{path}.{field}.point: no point named `{name}`"));
        return;
    };
    if values.is_empty() {
        problems.push(format!("{path}.{field}.values: list at least one value"));
    }
    if pt.ty == ValueType::Enum {
        for v in values {
            if !pt.labels.values().any(|l| l == v) {
                problems.push(format!(
                    "{path}.{field}.values: `{v}` is not a label of point `{name}`"
                ));
            }
        }
    }
}

/// `confirm`: a condition on a point, read back within 1 to 60000 ms.
fn check_confirm(
    a: &RawConfirm,
    points: &[Point],
    path: &str,
    problems: &mut Problems,
) -> CommandConfirm {
    check_point_values("confirm", &a.point, &a.values, points, path, problems);
    if !(1..=60_000).contains(&a.within_ms) {
        problems.push(format!(
            "{path}.confirm.within_ms: must be 1..=60000 (a bounded read-back)"
        ));
    }
    CommandConfirm {
        point: a.point.clone(),
        values: a.values.clone(),
        within: std::time::Duration::from_millis(a.within_ms),
    }
}
