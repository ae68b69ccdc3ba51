//! The JSON Schemas of bwmon's documents (`bwmon-agent/etc/schema/`), and checks against them.

use std::path::PathBuf;

/// The schema file `name` (`status`, `history`, `slice`).
pub fn schema_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../bwmon-agent/etc/schema")
        .join(format!("{name}.schema.json"))
}

/// The schema `name` as JSON.
pub fn schema(name: &str) -> serde_json::Value {
    let path = schema_path(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Panics, saying where and why, unless `doc` is valid under the schema `name`.
pub fn assert_valid(name: &str, doc: &serde_json::Value) {
    let url = format!("file://{}", schema_path(name).display());
    let mut schemas = boon::Schemas::new();
    let mut compiler = boon::Compiler::new();
    compiler
        .add_resource(&url, schema(name))
        .unwrap_or_else(|e| panic!("schema {name}: {e}"));
    let index = compiler
        .compile(&url, &mut schemas)
        .unwrap_or_else(|e| panic!("schema {name}: {e:#}"));
    if let Err(e) = schemas.validate(doc, index) {
        panic!(
            "not a valid {name} document: {e:#}\n{}",
            serde_json::to_string_pretty(doc).unwrap_or_default()
        );
    }
}

/// Panics unless every field of every object in `doc` is declared in the schema `name` (a
/// field bwmon prints and the schema does not name is a document the schema does not tell).
pub fn assert_declared(name: &str, doc: &serde_json::Value) {
    let root = schema(name);
    declared(&root, &root, doc, name);
}

fn declared(root: &serde_json::Value, at: &serde_json::Value, doc: &serde_json::Value, path: &str) {
    // A local `$ref` ("#/$defs/slice") stands for the schema it names.
    let at = match at["$ref"].as_str().and_then(|r| r.strip_prefix('#')) {
        Some(pointer) => root
            .pointer(pointer)
            .unwrap_or_else(|| panic!("{path}: no {pointer} in the schema")),
        None => at,
    };
    match doc {
        serde_json::Value::Object(fields) => {
            for (key, value) in fields {
                let property = if let Some(p) = at["properties"].get(key) {
                    p
                } else if at["additionalProperties"].is_object() {
                    &at["additionalProperties"]
                } else {
                    panic!("{path}: `{key}` is not declared in the schema");
                };
                declared(root, property, value, &format!("{path}.{key}"));
            }
        }
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                declared(root, &at["items"], item, &format!("{path}[{i}]"));
            }
        }
        _ => {}
    }
}

/// Both checks: `doc` is a valid `name` document, and the schema declares all it has.
pub fn assert_document(name: &str, doc: &serde_json::Value) {
    assert_valid(name, doc);
    assert_declared(name, doc);
}
