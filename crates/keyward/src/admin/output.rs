//! Output of admin commands: aligned tables for people, JSON with `--json`.

use serde_json::Value;

/// Prints `rows` (JSON objects) as a table of `columns`, or as JSON.
pub fn print_list(json: bool, value: &Value, columns: &[(&str, &str)]) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
        return;
    }
    let rows: Vec<&Value> = match value {
        Value::Array(items) => items.iter().collect(),
        Value::Object(map) => match map.get("items") {
            Some(Value::Array(items)) => items.iter().collect(),
            _ => vec![value],
        },
        _ => vec![value],
    };
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| columns.iter().map(|(key, _)| cell(row, key)).collect())
        .collect();
    let mut widths: Vec<usize> = columns.iter().map(|(_, h)| h.len()).collect();
    for row in &cells {
        for (i, c) in row.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |items: Vec<String>| {
        let mut s = String::new();
        for (i, item) in items.iter().enumerate() {
            if i + 1 == items.len() {
                s.push_str(item);
            } else {
                s.push_str(&format!("{:<w$}  ", item, w = widths[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(columns.iter().map(|(_, h)| h.to_string()).collect());
    for row in cells {
        line(row);
    }
}

/// Prints one object as `key: value` lines, or as JSON.
pub fn print_object(json: bool, value: &Value) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
        return;
    }
    if let Value::Object(map) = value {
        let width = map.keys().map(|k| k.len()).max().unwrap_or(0);
        for (k, v) in map {
            let shown = match v {
                Value::String(s) => s.clone(),
                Value::Null => "-".into(),
                other => other.to_string(),
            };
            println!("{:<width$}  {}", k, shown);
        }
    } else {
        println!("{value}");
    }
}

fn cell(row: &Value, key: &str) -> String {
    let mut v = row;
    for part in key.split('.') {
        v = &v[part];
    }
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| x.to_string())
            })
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}
