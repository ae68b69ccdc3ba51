//! The documents bwmon prints, built from its own types, against their JSON Schemas
//! (`bwmon-agent/etc/schema/`): every field they have is declared, and each is valid. (The
//! documents the binary prints, as root and as a tenant, are checked in `operate.rs`,
//! `levers.rs` and `history.rs`.) No root needed.

use bwmon_agent::{
    class::PerClass,
    history::{self, PeriodEntry},
    serve::{
        slice_view::{AttributeSource, ClassView, SliceDetail},
        status::{SliceStatus, StatusReport},
    },
};
use bwmon_tests::schema::{assert_valid, schema};
use serde_json::Value;

fn row(xid: u32) -> SliceStatus {
    SliceStatus {
        name: format!("s{xid}"),
        xid,
        period_start: 1000,
        period_end: 87_400,
        bytes: 5,
        exempt_bytes: 6,
        ceil_bps: 1_000_000,
        max_kbyte: 100,
        thresh_kbyte: 80,
        capped: true,
        classes: vec!["1:100".into()],
        granted_bytes: 1 << 20,
        limit_bps: Some(2_000_000),
        ..Default::default()
    }
}

fn report() -> StatusReport {
    StatusReport {
        now: 1500,
        period_secs: 86_400,
        interface: "eth0".into(),
        slices: vec![row(0), row(1001), row(1002)],
        last_sync_secs: 0.02,
        errors: [(bwmon_agent::error_kind::ErrorKind::Htb, 2)].into(),
        warnings: vec!["a warning".into()],
        version: "0.1.0".into(),
        ..Default::default()
    }
}

fn detail() -> SliceDetail {
    let class = |name: &str| ClassView {
        class: name.into(),
        used_bytes: 1,
        budget_bytes: 2,
        threshold_bytes: 1,
        granted_bytes: 0,
        ceil_bps: 3,
        max_rate_bps: 3,
        limit_bps: None,
        capped: false,
        rate_bps: 0,
        forecast_bytes: 1,
    };
    SliceDetail {
        version: "0.1.0".into(),
        name: "alice".into(),
        xid: 1001,
        departed: false,
        attributes: vec![AttributeSource {
            key: "net_max_kbyte".into(),
            value: 100,
            source: "[defaults]".into(),
        }],
        leaves: vec!["1:100".into()],
        period_start: 1000,
        period_end: 2000,
        classes: vec![class("general"), class("exempt")],
        emailed: false,
        notice_pending: true,
    }
}

fn periods() -> Vec<PeriodEntry> {
    let p = |slice: &str, xid, start| PeriodEntry {
        slice: slice.into(),
        xid,
        start,
        end: start + 100,
        bytes: PerClass {
            general: 10,
            exempt: 20,
        },
        budget: PerClass {
            general: 100,
            exempt: 200,
        },
        capped_at: PerClass {
            general: Some(start + 50),
            exempt: None,
        },
        lowest_ceil_bps: PerClass {
            general: 8000,
            exempt: 1_000_000,
        },
        noticed: true,
    };
    vec![
        p("alice", 1001, 0),
        p("alice", 1001, 100),
        p("bob", 1002, 0),
    ]
}

/// Every key of the objects in `doc` at `path` is declared in `schema` at `declared`.
fn declared(doc: &Value, schema: &Value, what: &str) {
    let keys = schema["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("{what}: no properties"));
    for key in doc.as_object().unwrap().keys() {
        assert!(
            keys.contains_key(key),
            "{what}: `{key}` is not in the schema"
        );
    }
}

#[test]
fn the_status_document_as_root_and_as_a_tenant_is_valid_and_declared() {
    let root = serde_json::to_value(report()).unwrap();
    assert_valid("status", &root);
    let status = schema("status");
    declared(&root, &status, "status");
    declared(
        &root["slices"][1],
        &status["$defs"]["slice"],
        "status slice",
    );
    let tenant = serde_json::to_value(report().for_tenant(1002).unwrap()).unwrap();
    assert_valid("status", &tenant);
    assert_eq!(tenant["slices"].as_array().unwrap().len(), 1);
    assert_eq!(tenant["slices"][0]["xid"], 1002);
    assert_eq!(tenant["warnings"], serde_json::json!([]));
    // A document without a documented field is not valid.
    let mut broken = root.clone();
    broken["slices"][0].as_object_mut().unwrap().remove("bytes");
    assert!(std::panic::catch_unwind(|| assert_valid("status", &broken)).is_err());
}

#[test]
fn the_history_document_is_valid_and_declared() {
    let doc = serde_json::to_value(history::document(&periods())).unwrap();
    assert_valid("history", &doc);
    let s = schema("history");
    declared(&doc, &s, "history");
    declared(
        &doc["slices"][0]["periods"][0],
        &s["$defs"]["period"],
        "period",
    );
    assert_eq!(doc["slices"].as_array().unwrap().len(), 2);
    let first = &doc["slices"][0];
    assert_eq!(
        (first["name"].as_str(), first["xid"].as_u64()),
        (Some("alice"), Some(1001))
    );
    let p = &first["periods"][0];
    assert_eq!(p["bytes"], 10);
    assert_eq!(p["exempt_bytes"], 20);
    assert_eq!(p["capped_at"], 50);
    assert_eq!(p["exempt_capped_at"], Value::Null);
    assert_eq!(p["notices"], 1);
}

#[test]
fn the_slice_document_is_valid_and_declared() {
    let doc = serde_json::to_value(detail()).unwrap();
    assert_valid("slice", &doc);
    let s = schema("slice");
    declared(&doc, &s, "slice");
    declared(
        &doc["classes"][0],
        &s["properties"]["classes"]["items"],
        "slice class",
    );
}
