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
