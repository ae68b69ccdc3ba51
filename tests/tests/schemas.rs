//! The JSON Schemas themselves (`bwmon-agent/etc/schema/`): each compiles, takes a document
//! of its kind and refuses one without a documented field. (The documents the binary prints,
//! as root and as a tenant, are checked against them in `operate.rs`, `levers.rs` and
//! `history.rs`; the events it POSTs, as a receiver got them, in `webhook.rs`.) No root
//! needed.

use bwmon_tests::schema::{assert_declared, assert_document, assert_valid};
use serde_json::{Value, json};

fn slice_line() -> Value {
    json!({
        "name": "alice", "xid": 1001, "period_start": 1000, "period_end": 87400,
        "bytes": 5, "exempt_bytes": 6, "ceil_bps": 1000000, "exempt_ceil_bps": 1000000,
        "max_kbyte": 100, "thresh_kbyte": 80, "i2_max_kbyte": 100, "i2_thresh_kbyte": 80,
        "capped": false, "exempt_capped": false, "emailed": false,
        "granted_bytes": 1048576, "limit_bps": 2000000, "exempt_limit_bps": null,
        "warned_percent": [80, 95], "exempt_warned_percent": []
    })
}

/// `f` panics.
fn refused(f: impl FnOnce() + std::panic::UnwindSafe) -> bool {
    std::panic::catch_unwind(f).is_err()
}

#[test]
fn the_status_schema_takes_root_and_tenant_documents_and_nothing_less() {
    let root = json!({
        "version": "0.1.0", "now": 1500, "period_secs": 86400, "interface": "eth0",
        "dry_run": false, "last_sync_secs": 0.02, "errors": {"htb": 2}, "warnings": ["w"],
        "slices": [slice_line(), slice_line()]
    });
    assert_document("status", &root);
    let tenant = json!({"version": "0.1.0", "now": 1500, "slices": [slice_line()]});
    assert_document("status", &tenant);
    let mut missing = root.clone();
    missing["slices"][0]
        .as_object_mut()
        .unwrap()
        .remove("bytes");
    assert!(refused(move || assert_valid("status", &missing)));
    let mut unknown = tenant.clone();
    unknown["slices"][0]["surprise"] = json!(1);
    assert!(refused(move || assert_declared("status", &unknown)));
    let flat = json!({"name": "alice", "xid": 1001, "classes": []});
    assert!(
        refused(move || assert_valid("status", &flat)),
        "a tenant's old document"
    );
}

#[test]
fn the_history_schema_takes_periods_per_slice_and_not_a_flat_list() {
    let doc = json!({
        "version": "0.1.0",
        "slices": [{"name": "alice", "xid": 1001, "periods": [{
            "start": 0, "end": 100, "bytes": 10, "exempt_bytes": 20, "capped_at": 50,
            "exempt_capped_at": null, "notices": 1, "budget_bytes": 100,
            "exempt_budget_bytes": 200, "lowest_ceil_bps": 8000, "exempt_lowest_ceil_bps": 1
        }]}]
    });
    assert_document("history", &doc);
    let flat = json!([{"slice": "alice", "xid": 1001, "start": 0, "end": 100}]);
    assert!(refused(move || assert_valid("history", &flat)));
}

#[test]
fn the_slice_schema_takes_a_slice_document() {
    let class = |name: &str| {
        json!({
            "class": name, "used_bytes": 1, "budget_bytes": 2, "threshold_bytes": 1,
            "granted_bytes": 0, "ceil_bps": 3, "max_rate_bps": 3, "limit_bps": null,
            "capped": false, "rate_bps": 0, "forecast_bytes": 1, "warned_percent": [80]
        })
    };
    let doc = json!({
        "version": "0.1.0", "name": "alice", "xid": 1001, "departed": false,
        "attributes": [{"key": "net_max_kbyte", "value": 100, "source": "[defaults]"}],
        "leaves": ["1:100"], "period_start": 1000, "period_end": 2000,
        "classes": [class("general"), class("exempt")], "emailed": false,
        "notice_pending": true
    });
    assert_document("slice", &doc);
    let mut no_version = doc.clone();
    no_version.as_object_mut().unwrap().remove("version");
    assert!(refused(move || assert_valid("slice", &no_version)));
}

#[test]
fn the_webhook_schema_takes_each_kind_of_event_and_nothing_less() {
    let event = |kind: &str, level: Value, lever: Value| {
        json!({
            "version": "0.1.0", "id": 7, "event": kind, "at": 1500, "host": "node1",
            "slice": "alice", "xid": 1001, "period_start": 1000, "period_end": 87400,
            "classes": [{"class": "general", "used_bytes": 900, "budget_bytes": 1000,
                         "ceil_bps": 8000, "level_percent": level}],
            "lever": lever
        })
    };
    for (kind, level, lever) in [
        ("warned", json!(80), Value::Null),
        ("capped", json!(95), Value::Null),
        ("capped", Value::Null, Value::Null),
        ("uncapped", Value::Null, Value::Null),
        ("new_period", Value::Null, Value::Null),
        (
            "lever",
            Value::Null,
            json!("alice: grant 1.0 GiB (general): general budget 1.0 KiB → 1.0 GiB"),
        ),
    ] {
        assert_document("webhook", &event(kind, level, lever));
    }
    let unknown = event("throttled", Value::Null, Value::Null);
    assert!(refused(move || assert_valid("webhook", &unknown)));
    let level = event("warned", json!(120), Value::Null);
    assert!(refused(move || assert_valid("webhook", &level)));
    let mut no_id = event("warned", json!(80), Value::Null);
    no_id.as_object_mut().unwrap().remove("id");
    assert!(refused(move || assert_valid("webhook", &no_id)));
}
