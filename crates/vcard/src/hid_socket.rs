//! The virtual HID device: a Unix socket (`--hid-socket PATH`) carrying
//! 64-byte HID reports without report ID over SOCK_STREAM, one client at a
//! time (there is no /dev/uhid here). Keyward's HID transport and the tests
//! open it like a device node: write a report, read reports.
//!
//! [`serve_hid_socket`] runs the CTAPHID device ([`crate::ctaphid_device`])
//! on a thread and hands CTAP requests to a [`CtapHandler`] (the card layer,
//! which owns the authenticator). While a request waits for a touch, the
//! presence tick sends KEEPALIVE(UPNEEDED) about every 100 ms and reads
//! the platform's reports, so CTAPHID CANCEL ends the wait.
//! [`HidSocketHandle::stop`] (control `remove`) closes the socket.

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use keyward_card::ctaphid::{cmd, keepalive, REPORT_SIZE};

use crate::ctaphid_device::{Action, BusyAction, CtaphidDevice};
use crate::fido::UserPresence;
use crate::presence::Presence;

/// Runs CTAP requests for the HID transport.
pub trait CtapHandler: Send {
    /// `request` is the command byte + CBOR; the answer is status + CBOR,
    /// or `None` when the device was pulled out meanwhile (it answers
    /// nothing; the socket is then closed).
    fn handle_cbor(&mut self, request: &[u8], presence: &mut dyn UserPresence) -> Option<Vec<u8>>;
}

impl<F> CtapHandler for F
where
    F: FnMut(&[u8], &mut dyn UserPresence) -> Option<Vec<u8>> + Send,
{
    fn handle_cbor(&mut self, request: &[u8], presence: &mut dyn UserPresence) -> Option<Vec<u8>> {
        self(request, presence)
    }
}

/// Stops the HID socket; dropping the handle stops it too.
pub struct HidSocketHandle {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    client: Arc<Mutex<Option<UnixStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl HidSocketHandle {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes the socket (the device is unplugged): the connected client
    /// sees end of file, the socket file is removed.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(s) = self.client.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for HidSocketHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Binds `path` (replacing a stale socket file) and serves CTAPHID on a
/// thread. `version` is what CTAPHID INIT reports (the firmware).
pub fn serve_hid_socket(
    path: &Path,
    handler: Box<dyn CtapHandler>,
    presence: Presence,
    version: (u8, u8, u8),
) -> io::Result<HidSocketHandle> {
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    listener.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let client: Arc<Mutex<Option<UnixStream>>> = Arc::new(Mutex::new(None));
    let thread = {
        let stop = stop.clone();
        let client = client.clone();
        std::thread::Builder::new()
            .name("vcard-hid".into())
            .spawn(move || {
                let mut server = Server {
                    device: CtaphidDevice::new(version),
                    handler,
                    presence,
                };
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            if let Ok(clone) = stream.try_clone() {
                                *client.lock().unwrap_or_else(|e| e.into_inner()) = Some(clone);
                            }
                            // The device keeps its channels across connections,
                            // as a HID device does across opens.
                            if let Err(e) = server.serve(stream, &stop) {
                                tracing::debug!(error = %e, "HID client gone");
                            }
                            client.lock().unwrap_or_else(|e| e.into_inner()).take();
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(20))
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "HID socket accept failed");
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
            })?
    };
    Ok(HidSocketHandle {
        path: path.to_path_buf(),
        stop,
        client,
        thread: Some(thread),
    })
}

struct Server {
    device: CtaphidDevice,
    handler: Box<dyn CtapHandler>,
    presence: Presence,
}

/// Reads whole reports from a stream with a read timeout, keeping partial
/// reads across timeouts.
struct ReportReader {
    buf: [u8; REPORT_SIZE],
    filled: usize,
}

enum Read64 {
    Report([u8; REPORT_SIZE]),
    Timeout,
    Closed,
}

impl ReportReader {
    fn read(&mut self, stream: &mut UnixStream) -> io::Result<Read64> {
        loop {
            match stream.read(&mut self.buf[self.filled..]) {
                Ok(0) => return Ok(Read64::Closed),
                Ok(n) => {
                    self.filled += n;
                    if self.filled == REPORT_SIZE {
                        self.filled = 0;
                        return Ok(Read64::Report(self.buf));
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(Read64::Timeout)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

fn send(stream: &mut UnixStream, reports: &[[u8; REPORT_SIZE]]) -> io::Result<()> {
    for r in reports {
        stream.write_all(r)?;
    }
    stream.flush()
}

impl Server {
    fn serve(&mut self, mut stream: UnixStream, stop: &AtomicBool) -> io::Result<()> {
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(Duration::from_millis(100)))?;
        let mut reader = ReportReader {
            buf: [0; REPORT_SIZE],
            filled: 0,
        };
        while !stop.load(Ordering::SeqCst) {
            let report = match reader.read(&mut stream)? {
                Read64::Closed => return Ok(()),
                Read64::Timeout => {
                    if let Some(r) = self.device.poll_timeout(Instant::now()) {
                        send(&mut stream, &[r])?;
                    }
                    continue;
                }
                Read64::Report(r) => r,
            };
            match self.device.receive(&report, Instant::now()) {
                Action::None => {}
                Action::Send(reports) => send(&mut stream, &reports)?,
                Action::Cbor { cid, request } => {
                    let response = self.run(cid, &request, &mut stream, &mut reader);
                    if let Some(response) = response {
                        let reports = self.device.response(cid, cmd::CBOR, &response);
                        send(&mut stream, &reports)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs one CTAP request. While presence is awaited, sends KEEPALIVE
    /// and reads the platform's reports (CANCEL, other channels).
    fn run(
        &mut self,
        cid: u32,
        request: &[u8],
        stream: &mut UnixStream,
        reader: &mut ReportReader,
    ) -> Option<Vec<u8>> {
        let Server {
            device,
            handler,
            presence,
        } = self;
        let mut io_failed = false;
        let mut tick = || {
            if io_failed {
                return false;
            }
            let mut write = stream.try_clone().ok();
            let ok = write
                .as_mut()
                .map(|w| send(w, &[CtaphidDevice::keepalive(cid, keepalive::UPNEEDED)]).is_ok())
                .unwrap_or(false);
            if !ok {
                io_failed = true;
                return false;
            }
            // Drain what the platform sent meanwhile, without blocking long.
            let _ = stream.set_read_timeout(Some(Duration::from_millis(1)));
            let mut cancelled = false;
            loop {
                match reader.read(stream) {
                    Ok(Read64::Report(r)) => {
                        match device.receive_while_busy(cid, &r, Instant::now()) {
                            BusyAction::Cancel => cancelled = true,
                            BusyAction::Send(out) => {
                                if let Some(w) = write.as_mut() {
                                    let _ = send(w, &out);
                                }
                            }
                            BusyAction::None => {}
                        }
                    }
                    Ok(Read64::Timeout) => break,
                    Ok(Read64::Closed) | Err(_) => {
                        io_failed = true;
                        cancelled = true;
                        break;
                    }
                }
            }
            let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
            !cancelled
        };
        let mut up = presence.with_tick(&mut tick);
        let response = handler.handle_cbor(request, &mut up);
        response.filter(|_| !io_failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fido::{attestation, FidoAuthenticator, FidoConfig, FidoState};
    use crate::presence::PresenceMode;
    use keyward_card::ctap::{self, command, StatusCode};
    use keyward_card::ctaphid::{fragment, Reassembler, BROADCAST_CID};

    fn authenticator() -> FidoAuthenticator {
        let (ca_key, ca_name, _) = attestation::test_ca().unwrap();
        let config = FidoConfig::yubikey5((5, 4, 3));
        let att =
            attestation::issue_attestation_key(config.aaguid, "Test", 1, &ca_key, &ca_name, vec![])
                .unwrap();
        FidoAuthenticator::new(config, FidoState::default(), Box::new(att))
    }

    struct Client {
        stream: UnixStream,
        cid: u32,
    }

    impl Client {
        fn connect(path: &Path) -> Self {
            let mut stream = UnixStream::connect(path).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let nonce = [9u8; 8];
            send(
                &mut stream,
                &fragment(BROADCAST_CID, cmd::INIT, &nonce).unwrap(),
            )
            .unwrap();
            let mut c = Self {
                stream,
                cid: BROADCAST_CID,
            };
            let m = c.read_message();
            assert_eq!(&m.data[..8], &nonce);
            assert_eq!(
                &m.data[12..16],
                &[2, 5, 4, 3],
                "protocol version and firmware"
            );
            c.cid = u32::from_be_bytes(m.data[8..12].try_into().unwrap());
            c
        }

        fn read_report(&mut self) -> [u8; REPORT_SIZE] {
            let mut r = [0u8; REPORT_SIZE];
            self.stream.read_exact(&mut r).unwrap();
            r
        }

        fn read_message(&mut self) -> keyward_card::ctaphid::Message {
            let mut re = Reassembler::new();
            loop {
                let r = self.read_report();
                if let Some(m) = re.push(&r).unwrap() {
                    return m;
                }
            }
        }

        fn send(&mut self, command: u8, data: &[u8]) {
            send(
                &mut self.stream,
                &fragment(self.cid, command, data).unwrap(),
            )
            .unwrap();
        }
    }

    #[test]
    fn cbor_ping_keepalive_cancel_and_remove() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hid.sock");
        let presence = Presence::new(PresenceMode::Manual, Duration::from_secs(5));
        let touch = presence.handle();
        let mut auth = authenticator();
        let handler = move |req: &[u8], up: &mut dyn UserPresence| Some(auth.handle(req, up));
        let handle = serve_hid_socket(&path, Box::new(handler), presence, (5, 4, 3)).unwrap();

        let mut c = Client::connect(&path);
        c.send(cmd::CBOR, &[command::GET_INFO]);
        let m = c.read_message();
        assert_eq!((m.cid, m.cmd, m.data[0]), (c.cid, cmd::CBOR, 0));
        let info = ctap::GetInfoResponse::from_value(&ctap::decode(&m.data[1..]).unwrap()).unwrap();
        assert!(info.versions.contains(&"FIDO_2_1_PRE".to_string()));

        let payload: Vec<u8> = (0..300u16).map(|i| i as u8).collect();
        c.send(cmd::PING, &payload);
        assert_eq!(c.read_message().data, payload);

        // selection is not in FIDO_2_1_PRE; use reset (needs a touch) to
        // see KEEPALIVE(UPNEEDED), then cancel it.
        c.send(cmd::CBOR, &[command::RESET]);
        let r = c.read_report();
        assert_eq!((r[4], r[7]), (cmd::KEEPALIVE, keepalive::UPNEEDED));
        c.send(cmd::CANCEL, &[]);
        let m = loop {
            let m = c.read_message();
            if m.cmd != cmd::KEEPALIVE {
                break m;
            }
        };
        assert_eq!(
            (m.cmd, m.data.as_slice()),
            (cmd::CBOR, &[StatusCode::ERR_KEEPALIVE_CANCEL.0][..])
        );

        // A touch confirms.
        c.send(cmd::CBOR, &[command::RESET]);
        let _ = c.read_report();
        assert!(touch.touch());
        let m = loop {
            let m = c.read_message();
            if m.cmd != cmd::KEEPALIVE {
                break m;
            }
        };
        assert_eq!(m.data, vec![0]);

        // remove: the client sees end of file.
        handle.stop();
        let mut buf = [0u8; 64];
        assert_eq!(c.stream.read(&mut buf).unwrap_or(0), 0);
        assert!(!path.exists());
    }
}
