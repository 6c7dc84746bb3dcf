//! The control socket (`--control PATH`): a Unix socket taking one ASCII
//! command per line, answered `ok` or `error <reason>`:
//! `touch`, `decline`, `remove`, `insert`, `power-cycle`, `presence`
//! (answered `ok waiting` while a request waits for a touch, else `ok idle`)
//! and `wrong-fido-pin` (a mistyped FIDO PIN, answered `ok <CTAP status>`:
//! `ok PIN_INVALID`, `ok PIN_AUTH_BLOCKED`, `ok PIN_BLOCKED`).

use crate::handle::VcardHandle;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// Carry out one control command; the answer line without its newline.
pub fn execute(handle: &VcardHandle, line: &str) -> String {
    match line.trim() {
        "touch" => {
            handle.touch();
            "ok".into()
        }
        "decline" => {
            handle.decline();
            "ok".into()
        }
        "remove" => {
            // Ends a request waiting for a touch too (without an answer).
            handle.remove();
            // Answer once the HID socket is really closed.
            handle.wait_hid_synced(std::time::Duration::from_secs(5));
            "ok".into()
        }
        "insert" => {
            handle.insert();
            handle.wait_hid_synced(std::time::Duration::from_secs(5));
            "ok".into()
        }
        "power-cycle" => {
            if handle.is_inserted() {
                handle.power_cycle();
                "ok".into()
            } else {
                "error card removed".into()
            }
        }
        "wrong-fido-pin" => match handle.wrong_fido_pin() {
            Ok(status) => format!("ok {}", status.name().trim_start_matches("CTAP2_ERR_")),
            Err(_) => "error card removed".into(),
        },
        "presence" => {
            if handle.presence().handle().is_waiting() {
                "ok waiting".into()
            } else {
                "ok idle".into()
            }
        }
        "" => "error empty command".into(),
        other => format!(
            "error unknown command {:?}",
            other.chars().take(40).collect::<String>()
        ),
    }
}

fn serve_client(handle: VcardHandle, stream: UnixStream) -> io::Result<()> {
    let mut writer = stream.try_clone()?;
    for line in BufReader::new(stream).lines() {
        let answer = execute(&handle, &line?);
        writer.write_all(answer.as_bytes())?;
        writer.write_all(b"\n")?;
    }
    Ok(())
}

/// Listen on `path` (a stale socket file is replaced) and serve clients on
/// their own threads.
pub fn serve(handle: VcardHandle, path: &Path) -> io::Result<std::thread::JoinHandle<()>> {
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let handle = handle.clone();
                std::thread::spawn(move || {
                    let _ = serve_client(handle, stream);
                });
            }
        })
}
