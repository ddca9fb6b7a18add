//! Conversions between raw registers/bits and engineering values for one [`Point`]: word order,
//! sign, scale/offset, enum labels, masks and sentinels; and the validation of a value to write.
//!
//! Pure functions only: no I/O, no state. A value to write is checked against type, range and
//! enum here, before anything reaches a bus.

use serde_json::Value;

use super::profile::{Point, Quality, ValueType, WordOrder};

/// Raw data read for one point: bits for coils/discretes, words for registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Raw<'a> {
    Bits(&'a [bool]),
    Words(&'a [u16]),
}

/// Words or bits to write for one point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encoded {
    Bit(bool),
    Words(Vec<u16>),
}

/// Why a value cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("expected {expected}, got `{got}`")]
    Type { expected: &'static str, got: String },
    #[error("`{value}` is outside the allowed range {min}..={max}")]
    Range {
        value: String,
        min: String,
        max: String,
    },
    #[error("`{got}` is not one of {allowed}")]
    Enum { got: String, allowed: String },
    #[error("point `{0}` is read-only")]
    ReadOnly(String),
}

fn join_words(w: &[u16], order: WordOrder) -> u32 {
    let (hi, lo) = match order {
        WordOrder::Big => (w.first(), w.get(1)),
        WordOrder::Little => (w.get(1), w.first()),
    };
    (u32::from(hi.copied().unwrap_or(0)) << 16) | u32::from(lo.copied().unwrap_or(0))
}

fn split_words(v: u32, order: WordOrder) -> Vec<u16> {
    let hi = (v >> 16) as u16;
    let lo = (v & 0xFFFF) as u16;
    match order {
        WordOrder::Big => vec![hi, lo],
        WordOrder::Little => vec![lo, hi],
    }
}

/// Rounds to 6 decimals so that `2301 * 0.1` shows as `230.1`.
fn tidy(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// Integer points stay JSON integers; scaled and float points are always JSON floats, so that a
/// point's JSON type never changes with its value (typed consumers, time-series stores).
fn number(p: &Point, x: f64) -> Value {
    let integral = matches!(
        p.ty,
        ValueType::U16 | ValueType::I16 | ValueType::U32 | ValueType::I32
    ) && p.scale == 1.0
        && p.offset.fract() == 0.0;
    if integral && x.fract() == 0.0 && x.abs() < 9.0e15 {
        Value::from(x as i64)
    } else {
        serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
    }
}

/// The raw integer a point's registers hold (before mask/sign/scale), for sentinel checks and
/// read-back comparison.
pub fn raw_u32(p: &Point, raw: &Raw<'_>) -> Option<u32> {
    match raw {
        Raw::Bits(b) => b.first().map(|&x| u32::from(x)),
        Raw::Words(w) => {
            if usize::from(p.width()) > w.len() {
                return None;
            }
            Some(if p.width() == 2 {
                join_words(w, p.word_order)
            } else {
                u32::from(w[0])
            })
        }
    }
}

/// Decodes a point: `(value, quality)`. A sentinel gives `Null` and its quality.
pub fn decode(p: &Point, raw: &Raw<'_>) -> (Value, Quality) {
    let Some(r) = raw_u32(p, raw) else {
        return (Value::Null, Quality::Error);
    };
    if let Some(s) = p.sentinels.iter().find(|s| s.raw == r) {
        return (Value::Null, s.quality);
    }
    let r = match p.mask {
        Some(m) => (r & u32::from(m)) >> m.trailing_zeros(),
        None => r,
    };
    let v = match p.ty {
        ValueType::Bool => return (Value::Bool(r != 0), Quality::Good),
        ValueType::Enum => {
            let key = u16::try_from(r).unwrap_or(u16::MAX);
            return match p.labels.get(&key) {
                Some(l) => (Value::String(l.clone()), Quality::Good),
                None => (Value::from(r), Quality::BadData),
            };
        }
        ValueType::U16 | ValueType::U32 => f64::from(r),
        ValueType::I16 => f64::from(r as u16 as i16),
        ValueType::I32 => f64::from(r as i32),
        ValueType::F32 => {
            let f = f32::from_bits(r);
            if !f.is_finite() {
                return (Value::Null, Quality::BadData);
            }
            f64::from(f)
        }
    };
    (number(p, tidy(v * p.scale + p.offset)), Quality::Good)
}

fn kind_name(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Validates `v` against the point's type, range and enum, and encodes it.
pub fn encode(p: &Point, v: &Value) -> Result<Encoded, ValueError> {
    if !p.writable() {
        return Err(ValueError::ReadOnly(p.name.clone()));
    }
    if p.ty == ValueType::Bool {
        let b = match v {
            Value::Bool(b) => *b,
            Value::Number(n) if n.as_u64() == Some(0) => false,
            Value::Number(n) if n.as_u64() == Some(1) => true,
            other => {
                return Err(ValueError::Type {
                    expected: "true or false",
                    got: kind_name(other),
                });
            }
        };
        // A profile may bound a bool point (e.g. `max = 0`: only `false` resets a sign): a value
        // the device would not keep is refused here, not found out as a read-back mismatch.
        let x = f64::from(u8::from(b));
        if p.min.is_some_and(|lo| x < lo) || p.max.is_some_and(|hi| x > hi) {
            let expected = if b {
                "false, the only value this point takes"
            } else {
                "true, the only value this point takes"
            };
            return Err(ValueError::Type {
                expected,
                got: kind_name(v),
            });
        }
        return Ok(if p.kind.is_bit() {
            Encoded::Bit(b)
        } else {
            Encoded::Words(vec![u16::from(b)])
        });
    }
    if p.ty == ValueType::Enum {
        let allowed = || {
            p.labels
                .values()
                .map(|l| format!("`{l}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let key = match v {
            Value::String(s) => p.labels.iter().find(|(_, l)| *l == s).map(|(k, _)| *k),
            Value::Number(n) => n
                .as_u64()
                .and_then(|x| u16::try_from(x).ok())
                .filter(|k| p.labels.contains_key(k)),
            _ => None,
        };
        return key
            .map(|k| Encoded::Words(vec![k]))
            .ok_or_else(|| ValueError::Enum {
                got: kind_name(v),
                allowed: allowed(),
            });
    }
    let Some(x) = v.as_f64().filter(|x| x.is_finite()) else {
        return Err(ValueError::Type {
            expected: "a number",
            got: kind_name(v),
        });
    };
    let (tmin, tmax) = match p.ty {
        ValueType::U16 => (0.0, 65535.0),
        ValueType::I16 => (-32768.0, 32767.0),
        ValueType::U32 => (0.0, 4_294_967_295.0),
        ValueType::I32 => (-2_147_483_648.0, 2_147_483_647.0),
        _ => (f64::from(f32::MIN), f64::from(f32::MAX)),
    };
    // Engineering range: the profile's, else what the type can carry after scaling.
    let lo_t = tidy(tmin * p.scale + p.offset).min(tidy(tmax * p.scale + p.offset));
    let hi_t = tidy(tmin * p.scale + p.offset).max(tidy(tmax * p.scale + p.offset));
    let lo = p.min.unwrap_or(lo_t).max(lo_t);
    let hi = p.max.unwrap_or(hi_t).min(hi_t);
    if x < lo || x > hi {
        return Err(ValueError::Range {
            value: x.to_string(),
            min: lo.to_string(),
            max: hi.to_string(),
        });
    }
    let raw = (x - p.offset) / p.scale;
    let words = match p.ty {
        ValueType::F32 => split_words((raw as f32).to_bits(), p.word_order),
        _ => {
            let r = raw.round();
            if (raw - r).abs() > 1e-6 {
                return Err(ValueError::Type {
                    expected: "a value on the point's resolution",
                    got: x.to_string(),
                });
            }
            match p.ty {
                ValueType::U16 => vec![r as u16],
                ValueType::I16 => vec![r as i16 as u16],
                ValueType::U32 => split_words(r as u32, p.word_order),
                _ => split_words(r as i32 as u32, p.word_order),
            }
        }
    };
    if let (Some(bits), Some(w)) = (p.bits, words.first())
        && w & !bits != 0
    {
        return Err(ValueError::Type {
            expected: "a value that sets only the point's defined bits",
            got: x.to_string(),
        });
    }
    // A value that would read back as a sentinel is refused too.
    let probe = Raw::Words(&words);
    if let Some(r) = raw_u32(p, &probe)
        && p.sentinels.iter().any(|s| s.raw == r)
    {
        return Err(ValueError::Range {
            value: x.to_string(),
            min: lo.to_string(),
            max: hi.to_string(),
        });
    }
    Ok(Encoded::Words(words))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::profile::Profile;
    use serde_json::json;

    fn prof() -> Profile {
        Profile::parse(
            r#"name = "t"
[[points]]
name = "v"
kind = "holding"
address = 0
type = "u32"
scale = 0.1
unit = "V"
[[points]]
name = "t"
kind = "holding"
address = 2
type = "i16"
scale = 0.1
min = 16.0
max = 32.0
write = "control"
sentinels = [{ raw = 0x7FFC, quality = "open_circuit" }]
[[points]]
name = "m"
kind = "holding"
address = 3
type = "enum"
labels = { 0 = "stop", 1 = "auto", 2 = "manual" }
write = "control"
[[points]]
name = "f"
kind = "input"
address = 4
type = "f32"
word_order = "little"
[[points]]
name = "n"
kind = "input"
address = 6
type = "enum"
mask = 0x00F0
labels = { 1 = "not_active", 2 = "warning" }
"#,
        )
        .unwrap()
    }

    #[test]
    fn decodes_scaled_u32_big_endian_and_signed_and_float_little_endian() {
        let p = prof();
        let (v, q) = decode(p.point("v").unwrap(), &Raw::Words(&[0, 2301]));
        assert_eq!((v, q), (json!(230.1), Quality::Good));
        let (v, _) = decode(p.point("t").unwrap(), &Raw::Words(&[0xFFFF]));
        assert_eq!(v, json!(-0.1));
        let bits = 21.5f32.to_bits();
        let (v, _) = decode(
            p.point("f").unwrap(),
            &Raw::Words(&[(bits & 0xFFFF) as u16, (bits >> 16) as u16]),
        );
        assert_eq!(v, json!(21.5));
        let (v, _) = decode(p.point("n").unwrap(), &Raw::Words(&[0x1121]));
        assert_eq!(v, json!("warning"));
    }

    #[test]
    fn a_sentinel_becomes_a_quality_not_a_number() {
        let p = prof();
        let (v, q) = decode(p.point("t").unwrap(), &Raw::Words(&[0x7FFC]));
        assert_eq!((v, q), (Value::Null, Quality::OpenCircuit));
    }

    #[test]
    fn a_bool_point_bounded_to_false_refuses_true_before_the_bus() {
        let p = Profile::parse(
            "name=\"t\"\n[[points]]\nname=\"sign\"\nkind=\"holding\"\naddress=4\ntype=\"bool\"\n\
             write=\"control\"\nmax=0.0\n",
        )
        .unwrap();
        let sign = p.point("sign").unwrap();
        assert_eq!(
            encode(sign, &json!(false)).unwrap(),
            Encoded::Words(vec![0])
        );
        assert_eq!(encode(sign, &json!(0)).unwrap(), Encoded::Words(vec![0]));
        for v in [json!(true), json!(1)] {
            assert!(
                matches!(encode(sign, &v), Err(ValueError::Type { expected, .. }) if expected.starts_with("false")),
                "{v}"
            );
        }
    }

    #[test]
    fn writes_are_validated_for_type_range_and_enum() {
        let p = prof();
        let t = p.point("t").unwrap();
        assert_eq!(encode(t, &json!(21.5)).unwrap(), Encoded::Words(vec![215]));
        assert!(matches!(
            encode(t, &json!(40)),
            Err(ValueError::Range { .. })
        ));
        assert!(matches!(
            encode(t, &json!("hot")),
            Err(ValueError::Type { .. })
        ));
        assert!(matches!(
            encode(t, &json!(21.55)),
            Err(ValueError::Type { .. })
        ));
        let m = p.point("m").unwrap();
        assert_eq!(
            encode(m, &json!("manual")).unwrap(),
            Encoded::Words(vec![2])
        );
        assert_eq!(encode(m, &json!(1)).unwrap(), Encoded::Words(vec![1]));
        assert!(matches!(
            encode(m, &json!("turbo")),
            Err(ValueError::Enum { .. })
        ));
        assert!(matches!(encode(m, &json!(7)), Err(ValueError::Enum { .. })));
        assert!(matches!(
            encode(p.point("v").unwrap(), &json!(1)),
            Err(ValueError::ReadOnly(_))
        ));
    }

    proptest::proptest! {
        #[test]
        fn any_value_accepted_for_writing_reads_back_as_itself(raw in 160i16..=320, f in -1.0e6f32..1.0e6) {
            let p = Profile::parse(
                "name=\"t\"\n[[points]]\nname=\"s\"\nkind=\"holding\"\naddress=0\ntype=\"i16\"\n\
                 scale=0.1\nmin=16.0\nmax=32.0\nwrite=\"control\"\n\
                 [[points]]\nname=\"f\"\nkind=\"holding\"\naddress=1\ntype=\"f32\"\nword_order=\"little\"\nwrite=\"control\"\n",
            )
            .unwrap();
            let s = p.point("s").unwrap();
            let v = serde_json::json!(f64::from(raw) / 10.0);
            let Encoded::Words(w) = encode(s, &v).unwrap() else { panic!("words") };
            proptest::prop_assert_eq!(decode(s, &Raw::Words(&w)), (v, Quality::Good));
            let fp = p.point("f").unwrap();
            let Encoded::Words(w) = encode(fp, &serde_json::json!(f64::from(f))).unwrap() else { panic!("words") };
            let (back, q) = decode(fp, &Raw::Words(&w));
            proptest::prop_assert_eq!(q, Quality::Good);
            let back = back.as_f64().unwrap();
            proptest::prop_assert!((back - f64::from(f)).abs() <= f64::from(f).abs() * 1e-6 + 1e-6);
        }

        #[test]
        fn decoding_arbitrary_registers_never_panics(w0 in proptest::num::u16::ANY, w1 in proptest::num::u16::ANY) {
            let p = prof();
            for pt in &p.points {
                let _ = decode(pt, &Raw::Words(&[w0, w1]));
                let _ = decode(pt, &Raw::Words(&[w0]));
                let _ = decode(pt, &Raw::Words(&[]));
            }
        }
    }
}
