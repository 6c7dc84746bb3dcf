//! vpcd client: the card connects to pcscd's vpcd reader driver over TCP
//! and appears as a card in a reader to every PC/SC program.
//!
//! Frames are a 2-byte big-endian length and a payload. A 1-byte payload
//! is control: 00 power off, 01 power on, 02 reset (no reply), 04 get ATR
//! (reply: the ATR, at any time). Longer payloads are command APDUs,
//! answered with one response APDU.

use crate::handle::VcardHandle;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::mpsc;
use std::time::Duration;

const POWER_OFF: u8 = 0x00;
const POWER_ON: u8 = 0x01;
const RESET: u8 = 0x02;
const GET_ATR: u8 = 0x04;
/// How often a blocked read wakes up to see whether the card was removed.
const POLL: Duration = Duration::from_millis(100);

/// Handle one vpcd frame; `None` means no reply.
pub fn answer_frame(handle: &VcardHandle, frame: &[u8]) -> Option<Vec<u8>> {
    match frame {
        [POWER_OFF] => {
            handle.power_off();
            None
        }
        [POWER_ON] => {
            handle.power_on();
            None
        }
        [RESET] => {
            handle.power_cycle();
            None
        }
        [GET_ATR] => Some(handle.atr()),
        [_] => None,
        apdu => Some(handle.transmit(apdu).unwrap_or_else(|_| vec![0x6F, 0x00])),
    }
}

/// vpcd writes a frame's length and its bytes in two writes, without
/// TCP_NODELAY: with Linux's delayed ACK its second write waits about 40 ms
/// for our ACK of the first, on every APDU. Quick ACKs take that wait away;
/// the kernel clears the flag as it goes, so it is set again before each read.
fn quickack(stream: &TcpStream) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let one: libc::c_int = 1;
        // SAFETY: a valid socket descriptor, and a c_int option value of the right size.
        unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                &one as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

/// Read one frame; `Ok(None)` when the read timed out before a frame began.
fn read_frame(stream: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    quickack(stream);
    stream.set_read_timeout(Some(POLL))?;
    match stream.read(&mut len[..1]) {
        Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
        Ok(_) => {}
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e),
    }
    // A frame has begun: read the rest of it without the poll timeout.
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    quickack(stream);
    stream.read_exact(&mut len[1..])?;
    quickack(stream);
    let mut frame = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut frame)?;
    Ok(Some(frame))
}

fn write_frame(stream: &mut TcpStream, payload: &[u8]) -> io::Result<()> {
    let mut out = Vec::with_capacity(payload.len() + 2);
    out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    out.extend_from_slice(payload);
    stream.write_all(&out)
}

/// Serve one connection until vpcd closes it or the card is removed.
/// `first_frame` is told when vpcd first talks to the card (pcscd has seen it).
fn serve_connection(
    handle: &VcardHandle,
    mut stream: TcpStream,
    first_frame: &mut Option<mpsc::Sender<()>>,
) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let generation = handle.generation();
    loop {
        if handle.generation() != generation || !handle.is_inserted() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return Ok(());
        }
        let Some(frame) = read_frame(&mut stream)? else {
            continue;
        };
        if let Some(reply) = answer_frame(handle, &frame) {
            write_frame(&mut stream, &reply)?;
        }
        // pcscd has powered the card and read its ATR: it is in the reader.
        if frame == [GET_ATR] {
            if let Some(tx) = first_frame.take() {
                let _ = tx.send(());
            }
        }
    }
}

/// Connect to vpcd at `addr` and serve the card for ever: reconnect after
/// `insert`, and when vpcd goes away. Returns an error only if the very
/// first connection fails. `on_attached` is called once, after vpcd has
/// read the card's ATR (or 5 seconds after connecting).
pub fn run(
    handle: VcardHandle,
    addr: &str,
    on_attached: impl FnOnce() + Send + 'static,
) -> io::Result<std::thread::JoinHandle<()>> {
    let addrs: Vec<_> = addr.to_socket_addrs()?.collect();
    let stream = TcpStream::connect(&addrs[..])?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        if rx.recv_timeout(Duration::from_secs(5)).is_ok() {
            // pcscd publishes the new reader state shortly after the ATR.
            std::thread::sleep(Duration::from_millis(300));
        }
        on_attached();
    });
    let join = std::thread::Builder::new()
        .name("vpcd".into())
        .spawn(move || {
            let mut first = Some(tx);
            let mut stream = Some(stream);
            loop {
                if !handle.wait_inserted(Duration::from_secs(3600)) {
                    continue;
                }
                let s = match stream.take() {
                    Some(s) => s,
                    None => match TcpStream::connect(&addrs[..]) {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(error = %e, "vpcd connection failed; retrying");
                            std::thread::sleep(Duration::from_millis(500));
                            continue;
                        }
                    },
                };
                tracing::info!("attached to vpcd");
                if let Err(e) = serve_connection(&handle, s, &mut first) {
                    tracing::warn!(error = %e, "vpcd connection lost");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        })?;
    Ok(join)
}
