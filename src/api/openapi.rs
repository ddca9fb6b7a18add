//! The OpenAPI document of the API (`docs/openapi.json`), served at `/api/v1/openapi.json`, and the
//! tests that hold it to the code: every route documented, and every typed response body of
//! [`super::views`] valid against the schema its operation documents.

/// The OpenAPI document served at `/api/v1/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("../../docs/openapi.json");

#[cfg(test)]
mod tests {
    //! Every JSON success body of every operation, built from the typed structs of
    //! [`super::super::views`] that the handlers return, must be valid against the schema the
    //! committed document gives that operation and status — strictly: a field the struct writes
    //! that the schema does not declare fails, as does a required field the struct leaves out, a
    //! wrong type, an enum value the document does not list or a timestamp that is not RFC 3339.
    //! Each struct is checked with every optional field filled and with every one empty. And the
    //! table below must name every documented JSON success response, so a new operation in the
    //! document without its struct here fails too.

    use std::collections::BTreeSet;

    use axum::http::StatusCode;
    use serde::Serialize;
    use serde_json::{Value, json};
    use time::OffsetDateTime;

    use super::OPENAPI_JSON;

    mod requests;
    use crate::api::ports::{
        Diagnostics, EnumLabel, GrantInfo, LinkStats, Lockout, PendingRequest, PointInfo, Reading,
        RegisterKind, ScanFound, UnitProfile, UnitSummary,
    };
    use crate::api::scan_jobs::{Progress, Scan, ScanStatus};
    use crate::api::views::*;
    use crate::audit::Record;
    use crate::business::{BusinessInfo, Suspension};
    use crate::modbus::Quality;
    use crate::model::{
        BusinessId, CapSet, Capability, GrantId, GroupId, LinkId, Management, Role, Scope, SiteId,
        UnitId, UserId,
    };

    fn doc() -> Value {
        serde_json::from_str(OPENAPI_JSON).unwrap()
    }

    /// Checks `v` against `schema`; pushes one line per violation onto `errs`.
    fn check(doc: &Value, schema: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
        check_with(doc, schema, v, at, errs, true);
    }

    fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
        match schema["$ref"].as_str() {
            Some(r) => {
                let name = r.trim_start_matches("#/components/schemas/");
                resolve(doc, &doc["components"]["schemas"][name])
            }
            None => schema,
        }
    }

    /// The property names a schema declares (through `$ref` and `allOf`).
    fn declared(doc: &Value, schema: &Value, out: &mut BTreeSet<String>) {
        let schema = resolve(doc, schema);
        if let Some(props) = schema["properties"].as_object() {
            out.extend(props.keys().cloned());
        }
        for s in schema["allOf"].as_array().into_iter().flatten() {
            declared(doc, s, out);
        }
    }

    fn check_with(
        doc: &Value,
        schema: &Value,
        v: &Value,
        at: &str,
        errs: &mut Vec<String>,
        strict: bool,
    ) {
        let schema = resolve(doc, schema);
        if v.is_null() && schema["nullable"] == true {
            return;
        }
        if let Some(all) = schema["allOf"].as_array() {
            for s in all {
                check_with(doc, s, v, at, errs, false);
            }
        }
        if let Some(one) = schema["oneOf"].as_array() {
            let fits = one
                .iter()
                .filter(|s| {
                    let mut e = Vec::new();
                    check_with(doc, s, v, at, &mut e, strict);
                    e.is_empty()
                })
                .count();
            if fits != 1 {
                errs.push(format!("{at}: fits {fits} of the oneOf alternatives"));
            }
        }
        if let Some(values) = schema["enum"].as_array() {
            if !values.contains(v) {
                errs.push(format!("{at}: {v} is not one of {values:?}"));
            }
        }
        let ty = schema["type"].as_str();
        let type_ok = match ty {
            None => true,
            Some("object") => v.is_object(),
            Some("array") => v.is_array(),
            Some("string") => v.is_string(),
            Some("integer") => v.is_i64() || v.is_u64(),
            Some("number") => v.is_number(),
            Some("boolean") => v.is_boolean(),
            Some(other) => {
                errs.push(format!("{at}: unknown schema type `{other}`"));
                true
            }
        };
        if !type_ok {
            errs.push(format!("{at}: {v} is not of type {}", ty.unwrap_or("?")));
            return;
        }
        // Integers compare exactly (an `int64` bound is not exact as a float).
        let exact = |x: &Value| {
            x.as_i64()
                .map(i128::from)
                .or_else(|| x.as_u64().map(i128::from))
        };
        match (exact(&schema["minimum"]), exact(v)) {
            (Some(min), Some(n)) if n < min => {
                errs.push(format!("{at}: {n} is below the minimum {min}"));
            }
            (None, _) | (_, None) => {
                if let (Some(min), Some(n)) = (schema["minimum"].as_f64(), v.as_f64()) {
                    if n < min {
                        errs.push(format!("{at}: {n} is below the minimum {min}"));
                    }
                }
            }
            _ => {}
        }
        match (exact(&schema["maximum"]), exact(v)) {
            (Some(max), Some(n)) if n > max => {
                errs.push(format!("{at}: {n} is above the maximum {max}"));
            }
            (None, _) | (_, None) => {
                if let (Some(max), Some(n)) = (schema["maximum"].as_f64(), v.as_f64()) {
                    if n > max {
                        errs.push(format!("{at}: {n} is above the maximum {max}"));
                    }
                }
            }
            _ => {}
        }
        let (lo, hi) = match schema["format"].as_str() {
            Some("int32") => (i128::from(i32::MIN), i128::from(i32::MAX)),
            Some("int64") => (i128::from(i64::MIN), i128::from(i64::MAX)),
            _ => (i128::MIN, i128::MAX),
        };
        if exact(v).is_some_and(|n| n < lo || n > hi) {
            errs.push(format!("{at}: {v} is outside the integer format"));
        }
        if let Some(s) = v.as_str() {
            let len = s.chars().count() as u64;
            if schema["maxLength"].as_u64().is_some_and(|m| len > m)
                || schema["minLength"].as_u64().is_some_and(|m| len < m)
            {
                errs.push(format!("{at}: `{s}` has a length outside the schema's"));
            }
            if schema["format"] == "date-time" && crate::clock::parse_rfc3339(s).is_err() {
                errs.push(format!("{at}: `{s}` is not an RFC 3339 date-time"));
            }
            if let Some(p) = schema["pattern"].as_str() {
                match regex::Regex::new(p) {
                    Ok(re) if re.is_match(s) => {}
                    Ok(_) => errs.push(format!("{at}: `{s}` does not match `{p}`")),
                    Err(e) => errs.push(format!("{at}: pattern `{p}` does not compile: {e}")),
                }
            }
        }
        if let Some(items) = v.as_array() {
            for (i, item) in items.iter().enumerate() {
                check_with(
                    doc,
                    &schema["items"],
                    item,
                    &format!("{at}[{i}]"),
                    errs,
                    true,
                );
            }
        }
        if let Some(obj) = v.as_object() {
            let n = obj.len() as u64;
            if schema["minProperties"].as_u64().is_some_and(|m| n < m)
                || schema["maxProperties"].as_u64().is_some_and(|m| n > m)
            {
                errs.push(format!("{at}: {n} properties, outside the schema's bounds"));
            }
            for r in schema["required"].as_array().into_iter().flatten() {
                if let Some(name) = r.as_str().filter(|n| !obj.contains_key(*n)) {
                    errs.push(format!("{at}: required `{name}` is missing"));
                }
            }
            let props = &schema["properties"];
            for (k, value) in obj {
                if !props[k].is_null() {
                    check_with(doc, &props[k], value, &format!("{at}.{k}"), errs, true);
                }
            }
            let open = schema["additionalProperties"] == true
                || schema["additionalProperties"].is_object();
            if strict
                && !open
                && (schema.get("properties").is_some() || schema.get("allOf").is_some())
            {
                let mut known = BTreeSet::new();
                declared(doc, schema, &mut known);
                for k in obj.keys().filter(|k| !known.contains(*k)) {
                    errs.push(format!("{at}: `{k}` is not in the document"));
                }
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Samples of every body, with every optional field filled (`full`) and empty (`!full`).
    // -----------------------------------------------------------------------------------------

    fn t() -> OffsetDateTime {
        crate::clock::from_unix_ms(1_767_225_600_000)
    }
    fn user(s: &str) -> UserId {
        UserId::new(s).unwrap()
    }
    fn unit(s: &str) -> UnitId {
        UnitId::new(s).unwrap()
    }
    fn caps() -> CapSet {
        let mut c = CapSet::EMPTY;
        c.insert(Capability::View);
        c.insert(Capability::Control);
        c
    }

    fn grant(full: bool) -> GrantInfo {
        GrantInfo {
            id: GrantId::new("g-1").unwrap(),
            user: user("u-1"),
            email: full.then(|| "a@example.com".into()),
            role: Role::Technician,
            scope: Scope::Site(SiteId::new("s-1").unwrap()),
            not_before: full.then(t),
            expires_at: full.then(t),
            origin: if full { "local" } else { "cloud" },
            delegator: full.then(|| user("u-0")),
        }
    }

    fn summary(full: bool) -> UnitSummary {
        UnitSummary {
            id: unit("hvac-1"),
            name: "Hall".into(),
            profile: "coolmaster-va".into(),
            group: full.then(|| GroupId::new("floor1").unwrap()),
            link: LinkId::new("bus1").unwrap(),
            online: full,
            last_seen: full.then(t),
            poll_interval_ms: full.then_some(1000),
        }
    }

    fn point(full: bool) -> PointInfo {
        PointInfo {
            name: "setpoint".into(),
            label: "Setpoint".into(),
            unit: full.then(|| "°C".into()),
            kind: "f32".into(),
            read: Capability::View,
            write: full.then_some(Capability::Control),
            min: full.then_some(16.0),
            max: full.then_some(30.0),
            enum_labels: if full {
                vec![EnumLabel {
                    value: 1,
                    label: "on".into(),
                }]
            } else {
                Vec::new()
            },
        }
    }

    fn unit_detail(full: bool) -> UnitView {
        let profile = UnitProfile {
            points: vec![point(full)],
            commands: vec![crate::api::ports::CommandInfo {
                name: "start".into(),
                label: "Start".into(),
                capability: Capability::Control,
            }],
        };
        let readings: Vec<Reading> = if full {
            vec![Reading {
                point: "setpoint".into(),
                value: json!(21.5),
                quality: Quality::Good,
                read_at: Some(t()),
            }]
        } else {
            Vec::new()
        };
        let mut v = unit_view(summary(full), &profile, &readings, caps(), t());
        v.fresh = Some(full);
        v
    }

    fn diagnostics(full: bool) -> DiagnosticsOut {
        DiagnosticsOut {
            diagnostics: Diagnostics {
                unit: unit("hvac-1"),
                slave: 2,
                online: full,
                consecutive_failures: 0,
                last_success: full.then(t),
                last_error: full.then(|| "timeout".into()),
                link: LinkStats {
                    link: "bus1".into(),
                    kind: "tcp".into(),
                    connected: full,
                    latency_p50_ms: full.then_some(4.0),
                    latency_p99_ms: full.then_some(9.0),
                    last_error: full.then(|| "timeout".into()),
                    ..LinkStats::default()
                },
            },
            raw: full.then(|| RawRead {
                kind: RegisterKind::Holding,
                address: 18,
                count: 2,
                values: vec![215, 65535],
            }),
        }
    }

    fn audit_page(full: bool) -> AuditPage {
        AuditPage {
            records: vec![Record {
                seq: 7,
                id: "e-7".into(),
                at: crate::clock::rfc3339(t()),
                kind: "command".into(),
                actor: full.then(|| "u-1".into()),
                unit: full.then(|| "hvac-1".into()),
                outcome: "ok".into(),
                detail: json!({"action": "write"}),
                hash: "ab".into(),
            }],
            next_before: full.then_some(7),
        }
    }

    fn suspension() -> Suspension {
        Suspension {
            business: BusinessId::new("acme").unwrap(),
            suspended_at: t(),
            suspended_by: "u-owner".into(),
            note: String::new(),
            members: vec![user("u-1")],
        }
    }

    fn me(full: bool) -> MeOut {
        MeOut {
            user: MeUser {
                id: user("u-1"),
                email: "a@example.com".into(),
                name: "A".into(),
                business: full.then(|| BusinessId::new("acme").unwrap()),
                business_suspended: full,
                owner: full,
            },
            session: MeSession {
                expires_at: crate::clock::rfc3339(t()),
            },
            management: full.then_some(Management::Pro),
            site: SiteCaps {
                capabilities: caps(),
            },
            units: vec![UnitCaps {
                unit: unit("hvac-1"),
                capabilities: caps(),
            }],
            grants: vec![grant(full)],
        }
    }

    fn request(full: bool) -> PendingRequest {
        PendingRequest {
            id: "r-1".into(),
            kind: "access".into(),
            requester: user("u-1"),
            user: user("u-1"),
            role: Role::Viewer,
            scope: Scope::Unit(unit("hvac-1")),
            expires_at: full.then(t),
            note: String::new(),
            created_at: t(),
            status: "pending".into(),
            resolved_at: full.then(t),
        }
    }

    fn lockout(full: bool) -> Lockout {
        Lockout {
            key: "ip:10.0.0.9".into(),
            label: "ip:10.0.0.9".into(),
            failures: 5,
            last_failure: t(),
            locked_until: full.then(t),
            next_allowed: t(),
        }
    }

    fn scan(full: bool) -> ScanView {
        let s = Scan {
            id: "5c4e".into(),
            link: LinkId::new("bus1").unwrap(),
            from: 1,
            to: 10,
            timeout_ms: 200,
            started_by: user("u-1"),
            started_at: t(),
            cancel: tokio_util::sync::CancellationToken::new(),
            progress: std::sync::Mutex::new(Progress {
                status: if full {
                    ScanStatus::Failed
                } else {
                    ScanStatus::Running
                },
                probed: 3,
                found: vec![ScanFound {
                    slave: 2,
                    identity: full
                        .then(|| "CoolAutomation".to_string())
                        .into_iter()
                        .collect(),
                    profile: full.then(|| "coolmaster-va".into()),
                    matched_by: full.then(|| "signature registers".into()),
                    unit: full.then(|| unit("hvac-1")),
                }],
                error: full.then(|| "link `bus1`: connection refused".into()),
                finished_at: full.then(t),
            }),
        };
        ScanView::of(&s)
    }

    fn unit_test(full: bool) -> UnitTestOut {
        UnitTestOut {
            unit: unit("hvac-1"),
            passed: !full,
            failures: usize::from(full),
            points: vec![TestedPoint {
                point: "room_temp".into(),
                label: "Room temperature".into(),
                unit: full.then(|| "°C".into()),
                value: if full { Value::Null } else { json!(21.5) },
                quality: if full {
                    Quality::OpenCircuit
                } else {
                    Quality::Good
                },
            }],
            at: crate::clock::rfc3339(t()),
            duration_ms: 42,
        }
    }

    fn body<T: Serialize>(v: T) -> Value {
        serde_json::to_value(v).unwrap()
    }

    /// `(method, path, status, body)` for every JSON success response.
    fn config_link(full: bool) -> LinkEntry {
        use crate::config_edit::{KindName, ParityName};
        LinkEntry {
            name: "bus".into(),
            kind: if full { KindName::Rtu } else { KindName::Tcp },
            address: (!full).then(|| "127.0.0.1:502".into()),
            device: full.then(|| "/dev/ttyUSB0".into()),
            baud: full.then_some(9600),
            parity: full.then_some(ParityName::Even),
            data_bits: full.then_some(8),
            stop_bits: full.then_some(1),
            timeout_ms: 1000,
            retries: 1,
            units: if full {
                vec!["gen-1".into()]
            } else {
                Vec::new()
            },
        }
    }

    fn config_unit(full: bool) -> UnitEntry {
        UnitEntry {
            id: "gen-1".into(),
            name: "Generator 1".into(),
            link: "bus".into(),
            slave: 3,
            profile: "dse-gencomm".into(),
            group: full.then(|| "plant-room".into()),
        }
    }

    fn samples(full: bool) -> Vec<(&'static str, &'static str, StatusCode, Value)> {
        let pending = || GrantChange::Pending {
            request_id: "r-1".into(),
        };
        vec![
            (
                "post",
                "/session",
                StatusCode::CREATED,
                body(SessionOut {
                    token: "tok".into(),
                    token_type: "Bearer",
                    user: user("u-1"),
                    expires_at: crate::clock::rfc3339(t()),
                    device: full.then(|| "dev".into()),
                }),
            ),
            ("get", "/me", StatusCode::OK, body(me(full))),
            (
                "get",
                "/units",
                StatusCode::OK,
                body(UnitList {
                    units: vec![UnitListed {
                        summary: summary(full),
                        capabilities: caps(),
                    }],
                }),
            ),
            (
                "get",
                "/units/{unit}",
                StatusCode::OK,
                body(unit_detail(full)),
            ),
            (
                "put",
                "/units/{unit}/points/{point}",
                StatusCode::OK,
                body(WriteOut {
                    unit: unit("hvac-1"),
                    point: "setpoint".into(),
                    written: json!(21.5),
                    read_back: json!(21.5),
                    at: crate::clock::rfc3339(t()),
                }),
            ),
            (
                "post",
                "/units/{unit}/commands/{command}",
                StatusCode::OK,
                body(CommandOut {
                    unit: unit("gen-1"),
                    command: "start".into(),
                    at: crate::clock::rfc3339(t()),
                }),
            ),
            (
                "get",
                "/units/{unit}/diagnostics",
                StatusCode::OK,
                body(diagnostics(full)),
            ),
            (
                "post",
                "/units/{unit}/test",
                StatusCode::OK,
                body(unit_test(full)),
            ),
            (
                "get",
                "/scans",
                StatusCode::OK,
                body(ScanList {
                    links: vec![LinkId::new("bus1").unwrap()],
                    scans: vec![scan(full)],
                }),
            ),
            ("post", "/scans", StatusCode::ACCEPTED, body(scan(full))),
            ("get", "/scans/{id}", StatusCode::OK, body(scan(full))),
            ("delete", "/scans/{id}", StatusCode::OK, body(scan(full))),
            ("get", "/audit", StatusCode::OK, body(audit_page(full))),
            (
                "get",
                "/audit/verify",
                StatusCode::OK,
                body(AuditVerify {
                    intact: !full,
                    records: if full { 0 } else { 12 },
                    broken_at: full.then_some(7),
                    checked_at: crate::clock::rfc3339(t()),
                }),
            ),
            (
                "get",
                "/roles",
                StatusCode::OK,
                body(RoleList {
                    roles: vec![grant(full)],
                    next_after: full.then(|| "a@example.com u-1 g-1 cloud".to_string()),
                }),
            ),
            (
                "get",
                "/grants",
                StatusCode::OK,
                body(GrantList {
                    grants: vec![grant(full)],
                }),
            ),
            (
                "post",
                "/grants",
                StatusCode::CREATED,
                body(GrantChange::Active {
                    grant: Some(grant(full)),
                }),
            ),
            ("post", "/grants", StatusCode::ACCEPTED, body(pending())),
            (
                "delete",
                "/grants/{id}",
                StatusCode::OK,
                body(GrantChange::Revoked {
                    grant: GrantId::new("g-1").unwrap(),
                }),
            ),
            (
                "delete",
                "/grants/{id}",
                StatusCode::ACCEPTED,
                body(pending()),
            ),
            (
                "get",
                "/access-requests",
                StatusCode::OK,
                body(RequestList {
                    requests: vec![request(full)],
                }),
            ),
            (
                "post",
                "/access-requests",
                StatusCode::ACCEPTED,
                body(pending()),
            ),
            (
                "get",
                "/lockouts",
                StatusCode::OK,
                body(LockoutList {
                    lockouts: vec![lockout(full)],
                }),
            ),
            (
                "get",
                "/businesses",
                StatusCode::OK,
                body(BusinessList {
                    businesses: vec![BusinessInfo {
                        business: BusinessId::new("acme").unwrap(),
                        members: vec![user("u-1")],
                        suspended: full,
                        suspension: full.then(suspension),
                    }],
                }),
            ),
            (
                "put",
                "/businesses/{business}/suspension",
                StatusCode::CREATED,
                body(SuspensionChange::Suspended {
                    suspension: suspension(),
                }),
            ),
            (
                "put",
                "/businesses/{business}/suspension",
                StatusCode::OK,
                body(SuspensionChange::Suspended {
                    suspension: suspension(),
                }),
            ),
            (
                "delete",
                "/businesses/{business}/suspension",
                StatusCode::OK,
                body(SuspensionChange::Restored {
                    business: BusinessId::new("acme").unwrap(),
                    suspended_at: crate::clock::rfc3339(t()),
                }),
            ),
            (
                "get",
                "/healthz",
                StatusCode::OK,
                body(Health { status: "ok" }),
            ),
            (
                "get",
                "/config/links",
                StatusCode::OK,
                body(ConfigLinks {
                    links: vec![config_link(full)],
                }),
            ),
            (
                "get",
                "/config/units",
                StatusCode::OK,
                body(ConfigUnits {
                    units: vec![config_unit(full)],
                }),
            ),
            (
                "post",
                "/config/links",
                StatusCode::ACCEPTED,
                body(ConfigChange {
                    change: "link_added",
                    link: full.then(|| config_link(full)),
                    unit: None,
                }),
            ),
            (
                "delete",
                "/config/links/{link}",
                StatusCode::ACCEPTED,
                body(ConfigChange {
                    change: "link_removed",
                    link: Some(config_link(full)),
                    unit: None,
                }),
            ),
            (
                "post",
                "/config/units",
                StatusCode::ACCEPTED,
                body(ConfigChange {
                    change: "unit_added",
                    link: None,
                    unit: full.then(|| config_unit(full)),
                }),
            ),
            (
                "delete",
                "/config/units/{unit}",
                StatusCode::ACCEPTED,
                body(ConfigChange {
                    change: "unit_removed",
                    link: None,
                    unit: Some(config_unit(full)),
                }),
            ),
        ]
    }

    #[test]
    fn every_typed_response_body_is_valid_against_the_schema_its_operation_documents() {
        let doc = doc();
        let mut errs = Vec::new();
        for full in [true, false] {
            for (method, path, status, v) in samples(full) {
                let schema = &doc["paths"][path][method]["responses"][status.as_str()]["content"]["application/json"]
                    ["schema"];
                assert!(
                    !schema.is_null(),
                    "{method} {path} documents no JSON {status} body"
                );
                let at = format!("{method} {path} {} (full: {full})", status.as_u16());
                check(&doc, schema, &v, &at, &mut errs);
            }
        }
        assert!(errs.is_empty(), "{}", errs.join("\n"));
    }

    #[test]
    fn every_documented_json_success_body_has_its_typed_struct_checked() {
        let doc = doc();
        let checked: BTreeSet<(String, String, String)> = samples(true)
            .into_iter()
            .map(|(m, p, s, _)| (m.to_string(), p.to_string(), s.as_str().to_string()))
            .collect();
        let mut missing = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                for (status, resp) in op["responses"].as_object().unwrap() {
                    let json_body = resp["content"]["application/json"].is_object();
                    // The OpenAPI document itself is served as is.
                    if status.starts_with('2') && json_body && path != "/openapi.json" {
                        let key = (method.clone(), path.clone(), status.clone());
                        if !checked.contains(&key) {
                            missing.push(key);
                        }
                    }
                }
            }
        }
        assert!(missing.is_empty(), "no typed body checked for {missing:?}");
    }

    #[test]
    fn every_error_body_is_valid_against_the_error_schema() {
        let doc = doc();
        let mut errs = Vec::new();
        let e = crate::api::ApiError::unit_not_found();
        let v = json!({ "error": e.code, "message": e.message });
        check(
            &doc,
            &json!({"$ref": "#/components/schemas/Error"}),
            &v,
            "error",
            &mut errs,
        );
        assert!(errs.is_empty(), "{}", errs.join("\n"));
    }

    #[test]
    fn the_checker_catches_an_undocumented_field_a_missing_one_and_a_wrong_type() {
        let doc = doc();
        let schema = json!({"$ref": "#/components/schemas/CommandResult"});
        let mut errs = Vec::new();
        let good = json!({"unit": "gen-1", "command": "start", "at": "2026-01-01T00:00:00Z"});
        check(&doc, &schema, &good, "good", &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        let extra =
            json!({"unit": "gen-1", "command": "start", "at": "2026-01-01T00:00:00Z", "x": 1});
        check(&doc, &schema, &extra, "extra", &mut errs);
        let missing = json!({"unit": "gen-1", "at": "2026-01-01T00:00:00Z"});
        check(&doc, &schema, &missing, "missing", &mut errs);
        let wrong = json!({"unit": 1, "command": "start", "at": "yesterday"});
        check(&doc, &schema, &wrong, "wrong", &mut errs);
        assert_eq!(errs.len(), 4, "{errs:#?}");
    }
}
