//! Bad input gets a clear 4xx with a stable code and the field or row, and
//! changes nothing.

use crate::support;

use serde_json::json;
use support::TestServer;

fn user(login: &str) -> serde_json::Value {
    json!({ "login": login, "display_name": format!("User {login}"), "upn": format!("{login}@example.com") })
}

#[test]
fn malformed_unknown_wrong_type_oversized_and_non_utf8_bodies() {
    let server = TestServer::start();
    let (s, v) = server.raw(
        "POST",
        "/users",
        "application/json",
        b"{\"login\":".to_vec(),
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("malformed_json")),
        "{v}"
    );

    let (s, v) = server.raw(
        "POST",
        "/users",
        "application/json",
        br#"{"login":"x1","display_name":"X","shoe_size":44}"#.to_vec(),
    );
    assert_eq!(s, 400);
    assert_eq!(v["error"]["code"], "unknown_field");
    assert_eq!(v["error"]["field"], "shoe_size");

    let (s, v) = server.raw(
        "POST",
        "/users",
        "application/json",
        br#"{"login":17,"display_name":"X"}"#.to_vec(),
    );
    assert_eq!(s, 400);
    assert_eq!(v["error"]["code"], "wrong_type");
    assert_eq!(v["error"]["field"], "login");

    let (s, v) = server.raw(
        "POST",
        "/users",
        "application/json",
        b"{\"login\":\"\xff\xfe\",\"display_name\":\"X\"}".to_vec(),
    );
    assert_eq!(s, 400);
    assert_eq!(v["error"]["code"], "invalid_utf8");

    let (s, v) = server.raw(
        "PUT",
        "/settings/initial_pin_display_mode",
        "application/json",
        br#"{"value":"sometimes"}"#.to_vec(),
    );
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["code"], "unknown_value");
    assert_eq!(v["error"]["field"], "initial_pin_display_mode");

    let (s, v) = server.raw(
        "PUT",
        "/settings/no_such_setting",
        "application/json",
        br#"{"value":"yes"}"#.to_vec(),
    );
    assert_eq!(s, 400);
    assert_eq!(v["error"]["code"], "unknown_value");
    assert_eq!(v["error"]["field"], "key");

    let big = format!(
        "{{\"login\":\"big\",\"display_name\":\"{}\"}}",
        "x".repeat(3 * 1024 * 1024)
    );
    let (s, v) = server.raw("POST", "/users", "application/json", big.into_bytes());
    assert_eq!(s, 413, "{v}");
    assert_eq!(v["error"]["code"], "body_too_large");

    let (s, v) = server.raw("POST", "/users", "text/plain", b"hello".to_vec());
    assert_eq!(s, 415);
    assert_eq!(v["error"]["code"], "unsupported_media_type");

    // Validation of values names the field.
    let (s, v) = server.call(
        "POST",
        "/users",
        Some(json!({ "login": "bad login!", "display_name": "X" })),
    );
    assert_eq!(s, 400);
    assert_eq!(v["error"]["field"], "login", "{v}");

    // Nothing was written by any of these.
    let (_, page) = server.call("GET", "/users", None);
    assert_eq!(page["items"].as_array().unwrap().len(), 0, "{page}");
}

#[test]
fn duplicate_login_and_serial_are_conflicts() {
    let server = TestServer::start();
    assert_eq!(server.call("POST", "/users", Some(user("dana"))).0, 201);
    let (s, v) = server.call("POST", "/users", Some(user("dana")));
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["error"]["code"], "duplicate_login");
    assert_eq!(v["error"]["field"], "login");

    let dev =
        json!({ "device_type": "yubikey5", "serial": "12345678", "firmware_version": "5.4.3" });
    assert_eq!(server.call("POST", "/devices", Some(dev.clone())).0, 201);
    let (s, v) = server.call("POST", "/devices", Some(dev));
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["error"]["code"], "duplicate_serial");
    let (s, v) = server.call(
        "POST",
        "/devices",
        Some(json!({ "device_type": "smartwatch", "serial": "1" })),
    );
    assert_eq!(s, 400);
    assert_eq!(v["error"]["code"], "unknown_value");
    assert_eq!(v["error"]["field"], "device_type");
}

#[test]
fn csv_import_with_bad_rows_is_all_or_nothing_by_default_and_partial_on_request() {
    let server = TestServer::start();
    let csv = "login,upn,display_name,email,attr:objectSid\n\
               erin,erin@example.com,Erin,erin@example.com,S-1-5-21-1\n\
               bad login,x@example.com,Bad,,\n\
               frank,frank@example.com,Frank,not-an-email,\n\
               gina,gina@example.com,Gina,,\n";
    let (s, v) = server.raw("POST", "/users/import", "text/csv", csv.as_bytes().to_vec());
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["code"], "import_rejected");
    let rejected = v["error"]["details"]["rejected"].as_array().unwrap();
    let rows: Vec<u64> = rejected
        .iter()
        .map(|r| r["row"].as_u64().unwrap())
        .collect();
    assert_eq!(rows, vec![2, 3], "{v}");
    assert_eq!(rejected[0]["field"], "login");
    assert_eq!(rejected[1]["field"], "email");
    // Nothing written.
    assert_eq!(server.call("GET", "/users/erin", None).0, 404);

    let (s, v) = server.raw(
        "POST",
        "/users/import?partial=true",
        "text/csv",
        csv.as_bytes().to_vec(),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["imported"], 2);
    assert_eq!(v["rejected"].as_array().unwrap().len(), 2);
    let (s, erin) = server.call("GET", "/users/erin", None);
    assert_eq!(s, 200);
    assert_eq!(erin["attributes"]["objectSid"], "S-1-5-21-1");

    // A second import of an existing login: conflict names the row, writes nothing.
    let csv2 = "login,display_name\nhank,Hank\nerin,Erin again\n";
    let (s, v) = server.raw(
        "POST",
        "/users/import",
        "text/csv",
        csv2.as_bytes().to_vec(),
    );
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["details"]["rejected"][0]["row"], 2);
    assert_eq!(server.call("GET", "/users/hank", None).0, 404);

    // Unknown columns are named.
    let (s, v) = server.raw(
        "POST",
        "/users/import",
        "text/csv",
        b"login,display_name,shoe\nx,X,1\n".to_vec(),
    );
    assert_eq!(s, 400);
    assert_eq!(v["error"]["code"], "csv_unknown_column");
    assert_eq!(v["error"]["field"], "shoe");

    // Devices: a bad serial and a bad type.
    let dcsv = "device_type,serial,firmware_version\nyubikey5,100,5.7.1\nyubikey5,abc,5.7.1\nfloppy,200,\n";
    let (s, v) = server.raw(
        "POST",
        "/devices/import",
        "text/csv",
        dcsv.as_bytes().to_vec(),
    );
    assert_eq!(s, 400, "{v}");
    let rows: Vec<u64> = v["error"]["details"]["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["row"].as_u64().unwrap())
        .collect();
    assert_eq!(rows, vec![2, 3]);
    assert_eq!(server.call("GET", "/devices/100", None).0, 404);
}

#[test]
fn device_state_changes_follow_the_state_machine_and_versions() {
    let server = TestServer::start();
    let (s, d) = server.call(
        "POST",
        "/devices",
        Some(json!({ "device_type": "c4000", "serial": "4000001" })),
    );
    assert_eq!(s, 201, "{d}");
    let version = d["version"].as_i64().unwrap();
    // available -> issued is not an allowed transition.
    let (s, v) = server.call(
        "POST",
        "/devices/4000001/state",
        Some(json!({ "to": "issued", "expected_version": version })),
    );
    assert_eq!(s, 400, "{v}");
    // available -> invalid(lost)? Only issued devices can be lost; terminated is allowed from available?
    // Whatever the whitelist says, a stale version is always a conflict:
    let (s, v) = server.call(
        "POST",
        "/devices/4000001/state",
        Some(json!({ "to": "terminated", "expected_version": version + 5 })),
    );
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["error"]["code"], "version_conflict");
    let (s, v) = server.call("GET", "/devices/4000001", None);
    assert_eq!(s, 200);
    assert_eq!(v["state"], "available");
    assert_eq!(v["state_label"], "Available");
}

#[test]
fn policies_are_validated_against_device_types() {
    let server = TestServer::start();
    // A YubiKey cannot share the PIN between PIV and FIDO; the FIDO service must exist.
    let (s, v) = server.call(
        "POST",
        "/policies",
        Some(json!({
            "name": "Too short",
            "device_types": ["piv"],
            "pin_application": { "min_length": 4, "max_length": 8, "character_set": "numeric" },
        })),
    );
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["field"]
            .as_str()
            .unwrap()
            .starts_with("pin_application"),
        "{v}"
    );
    let (s, v) = server.call(
        "POST",
        "/policies",
        Some(json!({ "name": "Mgmt", "device_types": ["piv"], "management_key": "random" })),
    );
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["field"], "management_key", "{v}");
    let (s, v) = server.call(
        "POST",
        "/policies",
        Some(json!({ "name": "Basic", "device_types": ["piv", "yubikey5"] })),
    );
    assert_eq!(s, 201, "{v}");
    let (s, v) = server.call(
        "POST",
        "/policies",
        Some(json!({ "name": "Basic", "device_types": ["piv"] })),
    );
    assert_eq!(s, 409, "{v}");
}

#[test]
fn pin_rules_and_live_checks_and_policies_that_fit_a_device() {
    let server = TestServer::start();
    support::seed_piv_standard(&server, "31000060");
    let (s, rules) = server.call("GET", "/policies/PIV%20Standard/pin-rules", None);
    assert_eq!(s, 200, "{rules}");
    let codes: Vec<&str> = rules
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].as_str().unwrap())
        .collect();
    assert!(
        codes.contains(&"pin_too_short") && codes.contains(&"pin_sequential_run"),
        "{rules}"
    );
    let (s, v) = server.call(
        "POST",
        "/policies/PIV%20Standard/pin-check",
        Some(json!({ "pin": "12345" })),
    );
    assert_eq!(s, 200);
    assert_eq!(v["valid"], false);
    let failed: Vec<&str> = v["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["passed"] == false)
        .map(|r| r["code"].as_str().unwrap())
        .collect();
    assert!(
        failed.contains(&"pin_too_short") && failed.contains(&"pin_sequential_run"),
        "{v}"
    );
    let (_, v) = server.call(
        "POST",
        "/policies/PIV%20Standard/pin-check",
        Some(json!({ "pin": "735194" })),
    );
    assert_eq!(v["valid"], true, "{v}");
    assert!(
        !server.output().contains("735194"),
        "a checked PIN is not logged"
    );

    // A policy for piv cards only does not fit the YubiKey.
    let (s, _) = server.call(
        "POST",
        "/policies",
        Some(json!({ "name": "Generic only", "device_types": ["piv"] })),
    );
    assert_eq!(s, 201);
    let (s, fitting) = server.call("GET", "/devices/31000060/policies", None);
    assert_eq!(s, 200);
    let names: Vec<&str> = fitting
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["PIV Standard"], "{fitting}");
}
