//! Requests against the document: every request body and query string an operation documents
//! is checked against the struct its handler deserializes into and the validation the handler
//! runs, in both directions.
//!
//! For each case below, candidate requests are generated from the document's schema (every
//! property at its bounds and just past them, each enum member and a non-member, every pattern's
//! samples, wrong types, `null`, a missing required property, an unknown one). The document's
//! own schema decides whether each candidate is valid (the checker of the parent module, with
//! `pattern`, integer formats and property counts). Then the handler's code path runs on it —
//! axum's deserialization, the extractor's error mapping and the handler's validation function
//! — and must accept every valid candidate and refuse every invalid one with a status and code
//! the operation documents. The struct's field set and every enum's variants are read from
//! serde's own refusal of an unknown name and must equal the document's.
//!
//! A new operation with a request body or query parameters fails
//! [`every_documented_request_has_a_case`] until it has a case here.

use std::collections::BTreeSet;

use axum::extract::Query;
use axum::http::Uri;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use super::{check, doc, resolve};
use crate::api::error::ApiError;
use crate::api::extract::{Object, json_rejection, query_rejection};
use crate::api::handlers::units::{self, DetailQuery};
use crate::api::handlers::{
    access_requests, audit, businesses, commands, diagnostics, grants, scans,
};
use crate::api::session::{self, LoginBody};
use crate::model::{BusinessId, GrantId, GroupId, SiteId, UnitId, UserId};

type Outcome = Result<(), ApiError>;

/// A body as `ApiJson` reads it (axum's `Json`, then the API's rejection mapping).
fn body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    axum::Json::<Object<T>>::from_bytes(bytes)
        .map(|j| j.0.0)
        .map_err(|r| json_rejection(&r, 65_536))
}

/// serde's own words on a body it refuses (not bounded like the API's message).
fn body_refusal<T: DeserializeOwned>(bytes: &[u8]) -> Option<String> {
    axum::Json::<Object<T>>::from_bytes(bytes)
        .err()
        .map(|r| r.body_text())
}

fn uri(q: &str) -> Uri {
    format!("/x?{q}").parse().unwrap()
}

/// A query string as `ApiQuery` reads it.
fn query<T: DeserializeOwned>(q: &str) -> Result<T, ApiError> {
    Query::<T>::try_from_uri(&uri(q))
        .map(|q| q.0)
        .map_err(|r| query_rejection(&r))
}

fn query_refusal<T: DeserializeOwned>(q: &str) -> Option<String> {
    Query::<T>::try_from_uri(&uri(q))
        .err()
        .map(|r| r.body_text())
}

/// One documented request: how its handler reads and validates it.
struct Case {
    method: &'static str,
    path: &'static str,
    /// Query parameters (else a JSON body).
    query: bool,
    /// Deserializes and validates as the handler does, on the raw body or query string.
    run: fn(&str) -> Outcome,
    /// serde's refusal text, for reading the struct's field names and enum variants.
    refusal: fn(&str) -> Option<String>,
    /// Properties the document allows but the handler always refuses when set (not null),
    /// with the documented answer.
    refused: &'static [(&'static str, u16, &'static str)],
    /// Valid starting points for a query (parameters that only go together).
    bases: &'static [&'static str],
    /// Rules the schema cannot state (the parameter descriptions do), and their neighbours:
    /// `(request, None)` accepted, `(request, Some((status, code)))` refused.
    extra: &'static [(&'static str, Option<(u16, &'static str)>)],
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            method: "post",
            path: "/session",
            query: false,
            run: |s| session::credentials(body::<LoginBody>(s.as_bytes())?).map(|_| ()),
            refusal: |s| body_refusal::<LoginBody>(s.as_bytes()),
            refused: &[],
            bases: &[],
            extra: &[],
        },
        Case {
            method: "put",
            path: "/units/{unit}/points/{point}",
            query: false,
            run: |s| body::<commands::WriteBody>(s.as_bytes()).map(|_| ()),
            refusal: |s| body_refusal::<commands::WriteBody>(s.as_bytes()),
            refused: &[],
            bases: &[],
            extra: &[],
        },
        Case {
            method: "post",
            path: "/grants",
            query: false,
            run: |s| grants::check_delegation(&body(s.as_bytes())?),
            refusal: |s| body_refusal::<crate::api::ports::DelegateRequest>(s.as_bytes()),
            refused: &[("password", 422, "invalid_request")],
            bases: &[],
            extra: &[],
        },
        Case {
            method: "post",
            path: "/access-requests",
            query: false,
            run: |s| access_requests::check_request(&body(s.as_bytes())?),
            refusal: |s| body_refusal::<crate::api::ports::AccessRequest>(s.as_bytes()),
            refused: &[],
            bases: &[],
            extra: &[],
        },
        Case {
            method: "put",
            path: "/businesses/{business}/suspension",
            query: false,
            run: |s| {
                let b: businesses::SuspendBody = body(s.as_bytes())?;
                Ok(crate::business::check_note(b.note.as_deref())?)
            },
            refusal: |s| body_refusal::<businesses::SuspendBody>(s.as_bytes()),
            refused: &[],
            bases: &[],
            extra: &[],
        },
        Case {
            method: "post",
            path: "/scans",
            query: false,
            run: |s| scans::check_scan(&body(s.as_bytes())?),
            refusal: |s| body_refusal::<scans::ScanRequest>(s.as_bytes()),
            refused: &[],
            bases: &[],
            extra: &[
                (r#"{"link":"rtu-1","from":5,"to":5}"#, None),
                (r#"{"link":"rtu-1","from":6,"to":5}"#, None),
            ],
        },
        Case {
            method: "post",
            path: "/config/links",
            query: false,
            run: |s| body::<crate::config_edit::NewLink>(s.as_bytes()).map(|_| ()),
            refusal: |s| body_refusal::<crate::config_edit::NewLink>(s.as_bytes()),
            refused: &[],
            bases: &[],
            extra: &[],
        },
        Case {
            method: "post",
            path: "/config/units",
            query: false,
            run: |s| body::<crate::config_edit::NewUnit>(s.as_bytes()).map(|_| ()),
            refusal: |s| body_refusal::<crate::config_edit::NewUnit>(s.as_bytes()),
            refused: &[],
            bases: &[],
            extra: &[],
        },
        Case {
            method: "get",
            path: "/units/{unit}",
            query: true,
            run: |s| query::<DetailQuery>(s).map(|_| ()),
            refusal: query_refusal::<units::DetailQuery>,
            refused: &[],
            bases: &[""],
            extra: &[],
        },
        Case {
            method: "get",
            path: "/units/{unit}/diagnostics",
            query: true,
            run: |s| diagnostics::raw_read(&query(s)?).map(|_| ()),
            refusal: query_refusal::<diagnostics::DiagQuery>,
            refused: &[],
            bases: &["", "kind=coil&address=0", "kind=holding&address=0"],
            extra: &[
                ("kind=coil&address=0&count=2000", None),
                ("kind=discrete&address=0&count=2000", None),
                ("kind=holding&address=0&count=125", None),
                ("kind=input&address=0&count=125", None),
                (
                    "kind=holding&address=0&count=126",
                    Some((400, "invalid_query")),
                ),
                (
                    "kind=input&address=0&count=126",
                    Some((400, "invalid_query")),
                ),
                ("kind=coil&address=65534&count=2", None),
                (
                    "kind=coil&address=65535&count=2",
                    Some((400, "invalid_query")),
                ),
                ("kind=holding&address=65411&count=125", None),
                (
                    "kind=holding&address=65412&count=125",
                    Some((400, "invalid_query")),
                ),
            ],
        },
        Case {
            method: "get",
            path: "/audit",
            query: true,
            run: |s| audit::check_query(&query(s)?).map(|_| ()),
            refusal: query_refusal::<audit::AuditQuery>,
            refused: &[],
            bases: &[""],
            extra: &[],
        },
        Case {
            method: "get",
            path: "/roles",
            query: true,
            run: |s| grants::check_roles_query(query(s)?).map(|_| ()),
            refusal: query_refusal::<grants::RolesQuery>,
            refused: &[],
            bases: &[""],
            extra: &[
                ("after=ada%40example.com%20ada%20g-admin%20cloud", None),
                ("origin=local&user=ADA&unit=hvac-1&limit=500", None),
            ],
        },
    ]
}

// ---------------------------------------------------------------------------------------------
// Samples
// ---------------------------------------------------------------------------------------------

/// Samples of every `pattern` the document uses: `(pattern, valid, invalid)`. The document's
/// regex must accept exactly the valid ones, and the parser behind the pattern must agree.
fn pattern_samples(pattern: &str) -> Option<(Vec<String>, Vec<String>)> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    match pattern {
        ID_PATTERN => {
            let mut valid = s(&["a", "Z", "0", "-", "_", "hvac-1", "a.b_c-D9", "a.", "x..y"]);
            valid.push("a".repeat(64));
            valid.push(format!("_{}", ".".repeat(63)));
            let mut invalid = s(&[
                "", ".", ".a", "a b", "a/b", "a%b", "é", "a\u{0}", "a\n", "a+b", "a:b",
            ]);
            invalid.push("a".repeat(65));
            Some((valid, invalid))
        }
        TOKEN_PATTERN => Some((
            s(&["", "{\"kind\":\"token\"}", "a\tb\r\n", " ~"]),
            s(&["\u{7f}", "é", "a\u{0}b", "\u{b}"]),
        )),
        EMAIL_PATTERN => Some((
            s(&["a@b", "@", "tech@example.com", "é@é", "a\n@\nb", "a@b@c"]),
            s(&["", "ab", "example.com"]),
        )),
        _ => None,
    }
}

const ID_PATTERN: &str = "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$";
const TOKEN_PATTERN: &str = "^[\\t\\n\\r\\x20-\\x7e]*$";
const EMAIL_PATTERN: &str = "^[\\s\\S]*@[\\s\\S]*$";

/// Values of other types, and `null`, tried for every property.
fn wrong_types() -> Vec<Value> {
    vec![
        Value::Null,
        json!(true),
        json!(7),
        json!(-1),
        json!(1.5),
        json!("s"),
        json!([]),
        json!({}),
    ]
}

/// Candidate values for `schema`, valid and not (the document decides which is which).
fn candidates(doc: &Value, schema: &Value) -> Vec<Value> {
    let schema = resolve(doc, schema);
    let mut out = wrong_types();
    if let Some(alts) = schema["oneOf"].as_array() {
        for a in alts {
            out.extend(candidates(doc, a));
        }
        return out;
    }
    if let Some(values) = schema["enum"].as_array() {
        out.extend(values.iter().cloned());
        out.push(json!("not-a-member"));
    }
    match schema["type"].as_str() {
        Some("object") => out.extend(object_candidates(doc, schema)),
        Some("string") => {
            let max = schema["maxLength"].as_u64().map(|m| m as usize);
            let min = schema["minLength"].as_u64().unwrap_or(0) as usize;
            out.extend([json!(""), json!("a")]);
            if let Some(max) = max {
                out.push(json!("a".repeat(max)));
                out.push(json!("a".repeat(max + 1)));
                out.push(json!("é".repeat(max)));
                out.push(json!("é".repeat(max + 1)));
            }
            if min > 0 {
                out.push(json!("a".repeat(min - 1)));
                out.push(json!("a".repeat(min)));
            }
            if let Some(p) = schema["pattern"].as_str() {
                let (valid, invalid) = pattern_samples(p)
                    .unwrap_or_else(|| panic!("no samples for the pattern `{p}`; add them"));
                out.extend(valid.into_iter().chain(invalid).map(Value::String));
            }
            if schema["format"] == "date-time" {
                out.extend([
                    json!("2026-01-01T00:00:00Z"),
                    json!("2026-01-01T00:00:00.5+02:00"),
                    json!("2026-13-01T00:00:00Z"),
                    json!("yesterday"),
                ]);
            }
        }
        Some("integer") => {
            out.extend([
                json!(0),
                json!(1),
                json!(65_535),
                json!(65_536),
                json!(4_294_967_295_u64),
                json!(4_294_967_296_u64),
                json!(i64::MAX),
                json!(i64::MAX as u64 + 1),
                json!(i64::MIN),
                json!(u64::MAX),
            ]);
            for bound in ["minimum", "maximum", "default"] {
                if let Some(n) = schema[bound].as_i64() {
                    for m in [i128::from(n) - 1, i128::from(n), i128::from(n) + 1] {
                        if let Ok(m) = i64::try_from(m) {
                            out.push(json!(m));
                        } else if let Ok(m) = u64::try_from(m) {
                            out.push(json!(m));
                        }
                    }
                }
            }
        }
        Some("boolean") => out.extend([json!(true), json!(false), json!("true")]),
        _ => {}
    }
    out.retain(|v| !v.is_number() || v.is_i64() || v.is_u64() || v.is_f64());
    out
}

/// The first candidate the document accepts.
fn first_valid(doc: &Value, schema: &Value) -> Value {
    candidates(doc, schema)
        .into_iter()
        .find(|v| valid(doc, schema, v))
        .unwrap_or_else(|| panic!("no valid sample for {schema}"))
}

fn valid(doc: &Value, schema: &Value, v: &Value) -> bool {
    let mut errs = Vec::new();
    check(doc, schema, v, "", &mut errs);
    errs.is_empty()
}

/// Objects: the required properties alone, with each property set to each of its candidates,
/// with each required one missing, and with an unknown one.
fn object_candidates(doc: &Value, schema: &Value) -> Vec<Value> {
    let props = schema["properties"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let required: Vec<&str> = schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let mut base = Map::new();
    for r in &required {
        base.insert(r.to_string(), first_valid(doc, &props[*r]));
    }
    let mut bases = vec![base.clone()];
    if schema["minProperties"].as_u64().unwrap_or(0) > base.len() as u64 {
        bases.clear();
    }
    let mut out: Vec<Value> = vec![Value::Object(base.clone())];
    for (name, p) in &props {
        let mut with = base.clone();
        with.insert(name.clone(), first_valid(doc, p));
        bases.push(with);
    }
    for b in &bases {
        out.push(Value::Object(b.clone()));
        for (name, p) in &props {
            for c in candidates(doc, p) {
                let mut v = b.clone();
                v.insert(name.clone(), c);
                out.push(Value::Object(v));
            }
        }
        for r in &required {
            let mut v = b.clone();
            v.remove(*r);
            out.push(Value::Object(v));
        }
        let mut v = b.clone();
        v.insert("unexpected".into(), json!(1));
        out.push(Value::Object(v));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Query strings
// ---------------------------------------------------------------------------------------------

fn query_params(op: &Value) -> Vec<&Value> {
    op["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["in"] == "query")
        .collect()
}

/// The query's fields as the handler's struct reads them, `(name, schema)`: each plain
/// parameter, and each property of an object parameter sent exploded (`style: form`,
/// `explode: true`: its properties are the query parameters), of every `oneOf` alternative.
fn query_fields<'a>(doc: &'a Value, op: &'a Value) -> Vec<(String, &'a Value)> {
    let mut out = Vec::new();
    for p in query_params(op) {
        if p["explode"] == true {
            let schema = resolve(doc, &p["schema"]);
            let alts: Vec<&Value> = match schema["oneOf"].as_array() {
                Some(a) => a.iter().map(|a| resolve(doc, a)).collect(),
                None => vec![schema],
            };
            for a in alts {
                for (name, s) in a["properties"].as_object().into_iter().flatten() {
                    out.push((name.clone(), s));
                }
            }
        } else {
            out.push((p["name"].as_str().unwrap().to_string(), &p["schema"]));
        }
    }
    out
}

/// Whether the document allows a (typed) query: plain parameters against their schemas, the
/// fields of an exploded object parameter together against its schema (or all absent when it
/// is optional), and no other names.
fn query_valid(doc: &Value, op: &Value, v: &Value) -> bool {
    let mut rest = v.as_object().cloned().unwrap_or_default();
    for p in query_params(op) {
        if p["explode"] == true {
            let schema = resolve(doc, &p["schema"]);
            let names: BTreeSet<String> = query_fields(doc, op)
                .into_iter()
                .map(|(n, _)| n)
                .filter(|n| rest.contains_key(n))
                .collect();
            let mut sub = Map::new();
            for n in &names {
                sub.extend(rest.remove_entry(n));
            }
            if sub.is_empty() {
                if p["required"] == true {
                    return false;
                }
            } else if !valid(doc, schema, &Value::Object(sub)) {
                return false;
            }
        } else {
            let name = p["name"].as_str().unwrap();
            match rest.remove(name) {
                Some(x) if !valid(doc, &p["schema"], &x) => return false,
                None if p["required"] == true => return false,
                _ => {}
            }
        }
    }
    rest.is_empty()
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// A query string, if the value can be one (flat strings, numbers and booleans).
fn to_query(v: &Value) -> Option<String> {
    let mut parts = Vec::new();
    for (k, v) in v.as_object()? {
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => return None,
        };
        parts.push(format!("{}={}", encode(k), encode(&text)));
    }
    Some(parts.join("&"))
}

/// A query string as the document's reader types it: integers and booleans by the parameter's
/// schema, everything else a string.
fn typed_query(doc: &Value, op: &Value, q: &str) -> Value {
    let mut out = Map::new();
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (decode(k), decode(v));
        let ty = query_fields(doc, op)
            .into_iter()
            .find(|(name, _)| *name == k)
            .map(|(_, s)| s["type"].as_str().unwrap_or("").to_string())
            .unwrap_or_default();
        let typed = match ty.as_str() {
            "integer" => v
                .parse::<i64>()
                .map(Value::from)
                .or_else(|_| v.parse::<u64>().map(Value::from))
                .unwrap_or(Value::String(v)),
            "boolean" if v == "true" || v == "false" => Value::Bool(v == "true"),
            _ => Value::String(v),
        };
        out.insert(k, typed);
    }
    Value::Object(out)
}

// ---------------------------------------------------------------------------------------------
// The checks
// ---------------------------------------------------------------------------------------------

fn op<'a>(doc: &'a Value, c: &Case) -> &'a Value {
    let op = &doc["paths"][c.path][c.method];
    assert!(op.is_object(), "{} {} is not documented", c.method, c.path);
    op
}

fn body_schema<'a>(doc: &'a Value, c: &Case) -> &'a Value {
    let s = &op(doc, c)["requestBody"]["content"]["application/json"]["schema"];
    assert!(
        s.is_object(),
        "{} {} documents no JSON request body",
        c.method,
        c.path
    );
    s
}

/// The `(status, code)` answers an operation documents: `x-error-codes` when it lists them,
/// else every error status it documents with any code of the `Error` schema.
fn documented_answer(doc: &Value, op: &Value, status: u16, code: &str) -> bool {
    let s = status.to_string();
    if op["responses"][&s].is_null() {
        return false;
    }
    match op["x-error-codes"][&s].as_array() {
        Some(codes) => codes.iter().any(|c| c == code),
        None => doc["components"]["schemas"]["Error"]["properties"]["error"]["enum"]
            .as_array()
            .is_none_or(|codes| codes.iter().any(|c| c == code)),
    }
}

#[test]
fn every_documented_request_has_a_case() {
    let doc = doc();
    let cases = cases();
    let mut missing = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let has_body = !op["requestBody"].is_null();
            let has_query = !query_params(op).is_empty();
            for (kind, has) in [(false, has_body), (true, has_query)] {
                let covered = cases
                    .iter()
                    .any(|c| c.method == method && c.path == path && c.query == kind);
                if has && !covered {
                    missing.push(format!(
                        "{} {path}: its {} has no case in src/api/openapi/tests/requests.rs",
                        method.to_uppercase(),
                        if kind { "query" } else { "request body" }
                    ));
                }
            }
        }
    }
    for c in &cases {
        let o = op(&doc, c);
        let has = if c.query {
            !query_params(o).is_empty()
        } else {
            !o["requestBody"].is_null()
        };
        assert!(
            has,
            "{} {} documents no {}",
            c.method,
            c.path,
            if c.query { "query" } else { "body" }
        );
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

/// The names serde lists in a refusal (`expected one of `a`, `b``, or `expected `a``).
fn expected_names(text: &str) -> BTreeSet<String> {
    let Some(i) = text.find("expected") else {
        return BTreeSet::new();
    };
    text[i..]
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

#[test]
fn every_request_struct_reads_exactly_the_documented_names() {
    let doc = doc();
    let mut errs = Vec::new();
    for c in cases() {
        let o = op(&doc, &c);
        let (schema, probe) = if c.query {
            let mut props = Map::new();
            // A field in several alternatives takes every member any of them allows.
            for (name, s) in query_fields(&doc, o) {
                let entry = props.entry(name).or_insert_with(|| s.clone());
                if let (Some(have), Some(more)) =
                    (entry["enum"].as_array().cloned(), s["enum"].as_array())
                {
                    let mut all = have;
                    all.extend(
                        more.iter()
                            .filter(|m| !all.contains(m))
                            .cloned()
                            .collect::<Vec<_>>(),
                    );
                    entry["enum"] = Value::Array(all);
                }
            }
            (
                json!({"type": "object", "properties": props}),
                "%01probe=1".to_string(),
            )
        } else {
            (body_schema(&doc, &c).clone(), "{\"\\u0001probe\":1}".into())
        };
        let mut documented = BTreeSet::new();
        super::declared(&doc, &schema, &mut documented);
        for alt in resolve(&doc, &schema)["oneOf"]
            .as_array()
            .into_iter()
            .flatten()
        {
            super::declared(&doc, alt, &mut documented);
        }
        let text = (c.refusal)(&probe).unwrap_or_default();
        let read = expected_names(&text);
        if read != documented {
            errs.push(format!(
                "{} {}: the struct reads {read:?}, the document lists {documented:?} ({text})",
                c.method, c.path
            ));
        }
        // Enum members and one-of-a-kind objects (a scope), as serde names them.
        let resolved = resolve(&doc, &schema);
        for (name, p) in resolved["properties"].as_object().into_iter().flatten() {
            let p = resolve(&doc, p);
            let (doc_names, probe_value): (BTreeSet<String>, Value) =
                if let Some(values) = p["enum"].as_array() {
                    let names = values.iter().filter_map(|v| v.as_str().map(String::from));
                    (names.collect(), json!("\u{1}probe"))
                } else if p["maxProperties"] == 1 {
                    let mut names = BTreeSet::new();
                    super::declared(&doc, p, &mut names);
                    (names, json!({"\u{1}probe": "a"}))
                } else {
                    continue;
                };
            let mut inst = if c.query {
                typed_query(&doc, o, c.bases.last().copied().unwrap_or(""))
            } else {
                first_valid(&doc, &schema)
            };
            if let Some(obj) = inst.as_object_mut() {
                obj.insert(name.clone(), probe_value);
            }
            let text = if c.query {
                to_query(&inst).and_then(|q| (c.refusal)(&q))
            } else {
                (c.refusal)(&inst.to_string())
            }
            .unwrap_or_default();
            let read = expected_names(&text);
            if read != doc_names {
                errs.push(format!(
                    "{} {} `{name}`: the code accepts {read:?}, the document lists \
                     {doc_names:?} ({text})",
                    c.method, c.path
                ));
            }
        }
    }
    assert!(errs.is_empty(), "{}", errs.join("\n"));
}

#[test]
fn every_request_the_document_allows_is_accepted_and_every_other_refused_as_documented() {
    let doc = doc();
    let mut errs = Vec::new();
    let mut counts = (0, 0);
    for c in cases() {
        let o = op(&doc, &c);
        let where_ = format!("{} {}", c.method.to_uppercase(), c.path);
        // (raw request, documented valid?, typed instance)
        let mut tries: Vec<(String, bool, Value)> = Vec::new();
        if c.query {
            let fields = query_fields(&doc, o);
            let mut insts: Vec<Value> = Vec::new();
            for base in c.bases {
                let base = typed_query(&doc, o, base);
                insts.push(base.clone());
                for (name, p) in &fields {
                    let mut v = base.clone();
                    v.as_object_mut().unwrap().remove(name);
                    insts.push(v);
                    for cand in candidates(&doc, p) {
                        let mut v = base.clone();
                        v.as_object_mut().unwrap().insert(name.clone(), cand);
                        insts.push(v);
                    }
                }
            }
            for inst in insts {
                let Some(q) = to_query(&inst) else { continue };
                let typed = typed_query(&doc, o, &q);
                let ok = query_valid(&doc, o, &typed);
                tries.push((q, ok, typed));
            }
        } else {
            let schema = body_schema(&doc, &c);
            for inst in candidates(&doc, schema) {
                let ok = valid(&doc, schema, &inst);
                tries.push((inst.to_string(), ok, inst));
            }
            tries.push(("{".into(), false, Value::Null));
            tries.push(("[1,".into(), false, Value::Null));
        }
        for (raw, ok, inst) in tries {
            let refused = c
                .refused
                .iter()
                .find(|(name, ..)| inst.get(name).is_some_and(|v| !v.is_null()) && ok);
            let got = (c.run)(&raw);
            match (ok, refused, &got) {
                (true, None, Ok(())) => counts.0 += 1,
                (true, None, Err(e)) => errs.push(format!(
                    "{where_}: the document allows `{raw}` but the handler refuses it: {} {} {}",
                    e.status.as_u16(),
                    e.code,
                    e.message
                )),
                (_, Some((_, status, code)), Err(e))
                    if e.status.as_u16() == *status && e.code == *code =>
                {
                    counts.1 += 1;
                }
                (_, Some((name, status, code)), _) => errs.push(format!(
                    "{where_}: `{raw}` sets `{name}`, documented as refused with {status} \
                     {code}, got {got:?}"
                )),
                (false, None, Ok(())) => errs.push(format!(
                    "{where_}: the document refuses `{raw}` but the handler accepts it"
                )),
                (false, None, Err(e)) => {
                    counts.1 += 1;
                    if !documented_answer(&doc, o, e.status.as_u16(), e.code) {
                        errs.push(format!(
                            "{where_}: `{raw}` is refused with {} `{}`, which the operation \
                             does not document",
                            e.status.as_u16(),
                            e.code
                        ));
                    }
                }
            }
        }
        for (raw, want) in c.extra {
            let got = (c.run)(raw);
            let same = match (want, &got) {
                (None, Ok(())) => true,
                (Some((s, code)), Err(e)) => e.status.as_u16() == *s && e.code == *code,
                _ => false,
            };
            if !same {
                errs.push(format!("{where_}: `{raw}`: want {want:?}, got {got:?}"));
            }
        }
    }
    errs.sort();
    errs.dedup();
    assert!(
        errs.is_empty(),
        "{} problems:\n{}",
        errs.len(),
        errs.join("\n")
    );
    assert!(counts.0 > 100 && counts.1 > 200, "{counts:?}");
}

#[test]
fn every_pattern_in_the_document_matches_exactly_what_its_parser_accepts() {
    type Parser = fn(&str) -> bool;
    let id_parsers: [(&str, Parser); 6] = [
        ("unit", |s| UnitId::new(s).is_ok()),
        ("site", |s| SiteId::new(s).is_ok()),
        ("group", |s| GroupId::new(s).is_ok()),
        ("user", |s| UserId::new(s).is_ok()),
        ("grant", |s| GrantId::new(s).is_ok()),
        ("business", |s| BusinessId::new(s).is_ok()),
    ];
    let token: Parser = |s| {
        let b = json!({ "token": s }).to_string();
        session::credentials(body::<LoginBody>(b.as_bytes()).unwrap()).is_ok()
    };
    let email: Parser = |s| {
        let b = json!({"email": s, "role": "viewer", "scope": {"site": "s"}}).to_string();
        grants::check_delegation(&body(b.as_bytes()).unwrap()).is_ok()
    };
    let doc = doc();
    let mut found = BTreeSet::new();
    fn walk(v: &Value, out: &mut BTreeSet<String>) {
        match v {
            Value::Object(m) => {
                if let Some(p) = m.get("pattern").and_then(Value::as_str) {
                    out.insert(p.to_string());
                }
                m.values().for_each(|x| walk(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(&doc, &mut found);
    assert!(found.contains(ID_PATTERN), "{found:?}");
    for p in &found {
        let (valid, invalid) =
            pattern_samples(p).unwrap_or_else(|| panic!("no samples for the pattern `{p}`"));
        let re = regex::Regex::new(p).unwrap();
        let parsers: Vec<(&str, Parser)> = match p.as_str() {
            ID_PATTERN => id_parsers.to_vec(),
            TOKEN_PATTERN => vec![("login token", token)],
            EMAIL_PATTERN => vec![("delegation email", email)],
            other => panic!("no parser named for the pattern `{other}`"),
        };
        for (sample, want) in valid
            .iter()
            .map(|s| (s, true))
            .chain(invalid.iter().map(|s| (s, false)))
        {
            assert_eq!(re.is_match(sample), want, "`{p}` on {sample:?}");
            for (name, parse) in &parsers {
                assert_eq!(
                    parse(sample),
                    want,
                    "the {name} parser on {sample:?} (`{p}`)"
                );
            }
        }
    }
}

/// Path parameters: each one names its parser through its pattern, or is free text the handler
/// looks up as is.
#[test]
fn every_path_parameter_is_an_id_with_the_id_pattern_or_a_named_free_text() {
    // Names looked up as is (a profile's point or command, a lockout key from GET /lockouts, a
    // link of the config file).
    const FREE: [&str; 4] = ["point", "command", "key", "link"];
    // Parsed as ids (`UnitId`, `GrantId`, `BusinessId`); a malformed one answers like an unknown
    // one.
    const IDS: [&str; 3] = ["unit", "id", "business"];
    let doc = doc();
    let mut errs = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for p in op["parameters"].as_array().into_iter().flatten() {
                if p["in"] != "path" {
                    continue;
                }
                let name = p["name"].as_str().unwrap();
                let pattern = resolve(&doc, &p["schema"])["pattern"].as_str();
                let ok = if IDS.contains(&name) {
                    pattern == Some(ID_PATTERN)
                } else {
                    FREE.contains(&name) && pattern.is_none()
                };
                if !ok {
                    errs.push(format!(
                        "{method} {path} `{name}`: an id parameter needs the id pattern, free \
                         text none; a new parameter must be added to one of the lists here"
                    ));
                }
            }
        }
    }
    assert!(errs.is_empty(), "{}", errs.join("\n"));
}
