//! The resource reference (`docs/reference.md`), generated from the CRD's
//! own schema, so that it says exactly what the API server enforces and
//! what `kubectl explain` shows. `managedbot crd --reference` prints it.

use std::fmt::Write as _;

use kube::CustomResourceExt as _;
use serde_json::Value;

use crate::resource::ManagedBot;

/// The reference as Markdown.
pub fn markdown() -> String {
    let crd = serde_json::to_value(ManagedBot::crd()).expect("a CRD always serializes");
    let version = &crd["spec"]["versions"][0];
    let schema = &version["schema"]["openAPIV3Schema"];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# ManagedBot reference\n\n\
         `{}/{}`, kind `ManagedBot`, namespaced, short name `mbot`. Generated from \
         the CRD (`managedbot crd --reference`; `make crd` rewrites this file and a test \
         fails when it is stale): every rule below is enforced by the API server at \
         `kubectl apply`, with the message shown.\n",
        crd["spec"]["group"].as_str().unwrap_or_default(),
        version["name"].as_str().unwrap_or_default(),
    );
    for (section, title) in [
        ("spec", "Spec: what you write"),
        ("status", "Status: what the controller reports"),
    ] {
        let _ = writeln!(out, "## {title}\n");
        let _ = writeln!(out, "| field | type | rules | description |");
        let _ = writeln!(out, "| --- | --- | --- | --- |");
        let node = &schema["properties"][section];
        walk(&mut out, section, node, false);
        out.push('\n');
    }
    let _ = writeln!(out, "## Columns of `kubectl get mbot`\n");
    let _ = writeln!(out, "| column | from | shown |");
    let _ = writeln!(out, "| --- | --- | --- |");
    for column in version["additionalPrinterColumns"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let wide = column["priority"].as_i64().unwrap_or(0) > 0;
        let _ = writeln!(
            out,
            "| {} | `{}` | {} |",
            column["name"].as_str().unwrap_or_default(),
            column["jsonPath"]
                .as_str()
                .unwrap_or_default()
                .replace('|', "\\|"),
            if wide { "with `-o wide`" } else { "always" }
        );
    }
    out
}

fn walk(out: &mut String, path: &str, node: &Value, required: bool) {
    let _ = writeln!(
        out,
        "| `{path}` | {} | {} | {} |",
        type_of(node),
        rules(node, required),
        cell(node["description"].as_str().unwrap_or_default())
    );
    let required_fields: Vec<&str> = node["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if let Some(properties) = node["properties"].as_object() {
        for (name, child) in properties {
            walk(
                out,
                &format!("{path}.{name}"),
                child,
                required_fields.contains(&name.as_str()),
            );
        }
    }
    let items = &node["items"];
    if items["properties"].is_object() {
        walk(out, &format!("{path}[]"), items, false);
    }
}

fn type_of(node: &Value) -> String {
    match node["type"].as_str() {
        Some("array") => format!(
            "array of {}",
            node["items"]["type"].as_str().unwrap_or("object")
        ),
        Some(other) => match node["format"].as_str() {
            Some(format) => format!("{other} ({format})"),
            None => other.to_string(),
        },
        None if node["x-kubernetes-int-or-string"] == true => "integer or string".into(),
        None => "any".into(),
    }
}

fn rules(node: &Value, required: bool) -> String {
    let mut rules = Vec::new();
    if required {
        rules.push("required".to_string());
    }
    if let Some(default) = node.get("default") {
        rules.push(format!("default `{default}`"));
    }
    for (key, label) in [
        ("minimum", "≥"),
        ("maximum", "≤"),
        ("minLength", "length ≥"),
        ("maxLength", "length ≤"),
        ("maxItems", "items ≤"),
    ] {
        // schemars writes some bounds as floats (1.0); Rust prints a whole f64 without ".0".
        if let Some(bound) = node.get(key).and_then(Value::as_f64) {
            rules.push(format!("{label} {bound}"));
        }
    }
    if let Some(pattern) = node["pattern"].as_str() {
        rules.push(format!("matches `{}`", pattern.replace('|', "\\|")));
    }
    let values = node["enum"].as_array().or(node["items"]["enum"].as_array());
    if let Some(values) = values {
        let names: Vec<String> = values
            .iter()
            .filter_map(Value::as_str)
            .map(|v| format!("`{v}`"))
            .collect();
        rules.push(format!("one of {}", names.join(", ")));
    }
    for rule in node["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(message) = rule["message"].as_str() {
            rules.push(cell(message));
        }
    }
    if node["x-kubernetes-list-type"] == "map" {
        let keys: Vec<&str> = node["x-kubernetes-list-map-keys"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        rules.push(format!("one entry per {}", keys.join(", ")));
    }
    rules.join("; ")
}

/// Text fit for one table cell.
fn cell(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_names_every_field_with_its_rules() {
        let reference = markdown();
        for expected in [
            "| `spec.tokenSecretRef.name` | string | required; length ≥ 1; length ≤ 253;",
            "| `spec.webhook.maxConnections` | integer (int32) | ≥ 1; ≤ 100 |",
            "Telegram delivers webhooks only to ports 443, 80, 88 and 8443",
            "exactly one of backend.service or backend.url must be set",
            "`message`, `edited_message`",
            "| `status.conditions` | array of object |",
            "| Ready | `.status.conditions[?(@.type==\"Ready\")].status` | always |",
        ] {
            assert!(
                reference.contains(expected),
                "missing {expected:?} in\n{reference}"
            );
        }
    }
}
