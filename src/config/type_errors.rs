//! Type errors of a config file, every one with its key path.
//!
//! serde stops at the first error. When the file does not deserialize, the parsed TOML is
//! checked again one section (and one `[[links]]`/`[[units]]`/… entry) at a time, and within an
//! entry past each error: an unknown key is dropped, a value of the wrong type is replaced by a
//! stand-in of the expected type, so the next problem shows. Each problem is reported as
//! `links[1].baud: expected an integer from 0 to 4294967295, found string "fast"`. The semantic
//! checks (`checks.rs`) run once every type is right.

use serde_path_to_error::Segment;
use toml::{Table, Value};

use super::{Problem, RawConfig};

/// At most this many problems from one entry (a file of garbage is not listed in full).
const MAX_PER_ENTRY: usize = 32;

/// Every type problem of `table`, in file order of sections (TOML tables keep key order).
pub(super) fn problems(table: &Table) -> Vec<Problem> {
    let mut out = Vec::new();
    for (key, value) in table {
        match value {
            Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_table) => {
                for (i, item) in items.iter().enumerate() {
                    entry(key, Some(i), item.clone(), &mut out);
                }
            }
            other => entry(key, None, other.clone(), &mut out),
        }
    }
    out
}

/// The problems of one top-level value (`index`: its place in an array of tables).
fn entry(key: &str, index: Option<usize>, mut value: Value, out: &mut Vec<Problem>) {
    for _ in 0..MAX_PER_ENTRY {
        let mut doc = Table::new();
        doc.insert(
            key.to_string(),
            match index {
                Some(_) => Value::Array(vec![value.clone()]),
                None => value.clone(),
            },
        );
        let Err(e) = serde_path_to_error::deserialize::<_, RawConfig>(Value::Table(doc)) else {
            return;
        };
        let segments: Vec<Segment> = e.path().iter().cloned().collect();
        let message = e.inner().message().to_string();
        // The path inside the entry (the document's key and array index dropped).
        let inner: &[Segment] = match index {
            Some(_) => segments.get(2..).unwrap_or(&[]),
            None => segments.get(1..).unwrap_or(&[]),
        };
        let mut path = match index {
            Some(i) => format!("{key}[{i}]"),
            None => key.to_string(),
        };
        for s in inner {
            match s {
                Segment::Seq { index } => path.push_str(&format!("[{index}]")),
                Segment::Map { key } | Segment::Enum { variant: key } => {
                    path.push('.');
                    path.push_str(key);
                }
                Segment::Unknown => path.push_str(".?"),
            }
        }
        let (text, next) = explain(&message);
        out.push(Problem {
            path,
            message: text,
        });
        // Go on past this error, or stop at one that cannot be stepped over.
        let stepped = match next {
            Next::Drop => remove(&mut value, inner),
            Next::Replace(v) => replace(&mut value, inner, v),
            Next::Stop => false,
        };
        if !stepped {
            return;
        }
    }
}

enum Next {
    Drop,
    Replace(Value),
    Stop,
}

/// A plain message for a serde error, and how to step over it.
fn explain(message: &str) -> (String, Next) {
    let message = message.trim_end_matches('.');
    if message.starts_with("unknown field") {
        return (message.to_string(), Next::Drop);
    }
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        if let Some((found, expected)) = rest.split_once(", expected ") {
            let (what, stand_in) = expected_as(expected);
            return (
                format!("expected {what}, found {found}"),
                stand_in.map_or(Next::Stop, Next::Replace),
            );
        }
    }
    if let Some(rest) = message.strip_prefix("invalid value: ") {
        if let Some((found, expected)) = rest.split_once(", expected ") {
            let (what, stand_in) = expected_as(expected);
            return (
                format!("expected {what}, found {found}"),
                stand_in.map_or(Next::Stop, Next::Replace),
            );
        }
    }
    (message.to_string(), Next::Stop)
}

/// serde's name for an expected type, said plainly, and a stand-in value of that type.
fn expected_as(expected: &str) -> (String, Option<Value>) {
    let int = |lo: i64, hi: &str| {
        (
            format!("an integer from {lo} to {hi}"),
            Some(Value::Integer(lo.max(0))),
        )
    };
    match expected {
        "u8" => int(0, "255"),
        "u16" => int(0, "65535"),
        "u32" => int(0, "4294967295"),
        "u64" | "usize" => int(0, "18446744073709551615"),
        "i8" | "i16" | "i32" | "i64" | "isize" => ("an integer".into(), Some(Value::Integer(0))),
        "f32" | "f64" => ("a number".into(), Some(Value::Float(0.0))),
        "a boolean" => ("true or false".into(), Some(Value::Boolean(false))),
        "a string" | "path string" | "a borrowed string" => {
            ("a string".into(), Some(Value::String(String::new())))
        }
        "a sequence" => ("an array".into(), Some(Value::Array(Vec::new()))),
        other if other.starts_with("struct ") => ("a table".into(), None),
        other => (other.to_string(), None),
    }
}

/// The value at `path` inside `v`, if there is one.
fn at<'a>(v: &'a mut Value, path: &[Segment]) -> Option<&'a mut Value> {
    let mut cur = v;
    for s in path {
        cur = match (s, cur) {
            (Segment::Map { key }, Value::Table(t)) => t.get_mut(key)?,
            (Segment::Seq { index }, Value::Array(a)) => a.get_mut(*index)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn remove(v: &mut Value, path: &[Segment]) -> bool {
    let Some((last, parent)) = path.split_last() else {
        return false;
    };
    match (last, at(v, parent)) {
        (Segment::Map { key }, Some(Value::Table(t))) => t.remove(key).is_some(),
        _ => false,
    }
}

fn replace(v: &mut Value, path: &[Segment], with: Value) -> bool {
    if path.is_empty() {
        return false;
    }
    match at(v, path) {
        Some(slot) if *slot != with => {
            *slot = with;
            true
        }
        _ => false,
    }
}
