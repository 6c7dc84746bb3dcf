//! FIDO HID devices: Linux hidraw nodes whose report descriptor declares
//! the FIDO usage page (0xF1D0), and the virtual device's HID socket (a
//! Unix SOCK_STREAM carrying 64-byte reports without report ID).
//!
//! hidraw needs no system library: the report descriptor and the USB ids
//! come from sysfs (`/sys/class/hidraw/hidrawN/device/report_descriptor`
//! and `uevent`), and the node is read and written with plain file I/O and
//! poll(2).

use crate::ctaphid::{HidReports, Report};
use crate::error::TransportError;
use keyward_card::ctaphid::REPORT_SIZE;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The FIDO Alliance usage page (CTAP 2.1 section 11.2.8.1).
pub const FIDO_USAGE_PAGE: u32 = 0xF1D0;
/// Yubico's USB vendor id.
pub const YUBICO_VENDOR_ID: u16 = 0x1050;

/// Whether a HID report descriptor declares the FIDO usage page. Walks
/// the short items (global item Usage Page, tag 0) and skips long items.
pub fn is_fido_descriptor(descriptor: &[u8]) -> bool {
    let mut i = 0;
    while i < descriptor.len() {
        let prefix = descriptor[i];
        if prefix == 0xFE {
            // Long item: FE, data size, long tag, data.
            let size = descriptor.get(i + 1).copied().unwrap_or(0) as usize;
            i += 3 + size;
            continue;
        }
        let size = match prefix & 0x03 {
            3 => 4,
            n => n as usize,
        };
        let Some(data) = descriptor.get(i + 1..i + 1 + size) else {
            return false;
        };
        // bType = global (1), bTag = Usage Page (0): prefix 0000 01 xx.
        if prefix & 0xFC == 0x04 {
            let mut value = 0u32;
            for (k, b) in data.iter().enumerate() {
                value |= (*b as u32) << (8 * k);
            }
            if value == FIDO_USAGE_PAGE {
                return true;
            }
        }
        i += 1 + size;
    }
    false
}

/// What a hidraw node's sysfs `uevent` says about its device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HidUevent {
    pub vendor_id: Option<u16>,
    pub product_id: Option<u16>,
    pub name: Option<String>,
}

/// Parses `HID_ID=0003:00001050:00000407` and `HID_NAME=...`.
pub fn parse_uevent(text: &str) -> HidUevent {
    let mut out = HidUevent::default();
    for line in text.lines() {
        if let Some(id) = line.strip_prefix("HID_ID=") {
            let parts: Vec<&str> = id.split(':').collect();
            if parts.len() == 3 {
                out.vendor_id = u32::from_str_radix(parts[1], 16).ok().map(|v| v as u16);
                out.product_id = u32::from_str_radix(parts[2], 16).ok().map(|v| v as u16);
            }
        } else if let Some(name) = line.strip_prefix("HID_NAME=") {
            out.name = Some(name.to_string());
        }
    }
    out
}

/// A FIDO HID device found on the system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HidDeviceInfo {
    /// `/dev/hidrawN` or the socket path.
    pub path: PathBuf,
    pub kind: HidKind,
    pub uevent: HidUevent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HidKind {
    Hidraw,
    Socket,
}

/// FIDO hidraw devices (`/sys/class/hidraw` read under `sysfs_root`, the
/// nodes under `dev_root`: `/sys` and `/dev` outside tests). A system
/// without hidraw has none.
pub fn list_hidraw(sysfs_root: &Path, dev_root: &Path) -> Vec<HidDeviceInfo> {
    let class = sysfs_root.join("class/hidraw");
    let Ok(entries) = std::fs::read_dir(&class) else {
        return Vec::new();
    };
    let mut out: Vec<HidDeviceInfo> = entries
        .flatten()
        .filter_map(|e| {
            let node = e.file_name().to_string_lossy().into_owned();
            let device = e.path().join("device");
            let descriptor = std::fs::read(device.join("report_descriptor")).ok()?;
            if !is_fido_descriptor(&descriptor) {
                return None;
            }
            let uevent = std::fs::read_to_string(device.join("uevent"))
                .map(|t| parse_uevent(&t))
                .unwrap_or_default();
            Some(HidDeviceInfo {
                path: dev_root.join(node),
                kind: HidKind::Hidraw,
                uevent,
            })
        })
        .collect();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// A hidraw node opened for CTAPHID.
pub struct HidrawDevice {
    file: File,
    path: PathBuf,
}

impl HidrawDevice {
    pub fn open(path: &Path) -> Result<Self, TransportError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => TransportError::DeviceRemoved,
                _ => TransportError::from(e),
            })?;
        Ok(HidrawDevice {
            file,
            path: path.to_path_buf(),
        })
    }
}

/// poll(2) for input on `fd`; whether it is readable within `timeout`.
fn poll_readable(fd: i32, timeout: Duration) -> Result<bool, TransportError> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(e.into());
    }
    if pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
        && pfd.revents & libc::POLLIN == 0
    {
        return Err(TransportError::DeviceRemoved);
    }
    Ok(n > 0)
}

impl HidReports for HidrawDevice {
    fn write_report(&mut self, report: &Report) -> Result<(), TransportError> {
        // FIDO descriptors declare no report ids: report id 0 goes first.
        let mut out = [0u8; REPORT_SIZE + 1];
        out[1..].copy_from_slice(report);
        self.file.write_all(&out)?;
        Ok(())
    }

    fn read_report(&mut self, timeout: Duration) -> Result<Option<Report>, TransportError> {
        if !poll_readable(self.file.as_raw_fd(), timeout)? {
            return Ok(None);
        }
        let mut buf = [0u8; REPORT_SIZE + 1];
        let n = self.file.read(&mut buf)?;
        if n == 0 {
            return Err(TransportError::DeviceRemoved);
        }
        if n < REPORT_SIZE {
            return Err(TransportError::protocol(format!(
                "hidraw gave a report of {n} bytes"
            )));
        }
        let mut r = [0u8; REPORT_SIZE];
        r.copy_from_slice(&buf[..REPORT_SIZE]);
        Ok(Some(r))
    }

    fn path(&self) -> String {
        self.path.display().to_string()
    }
}

/// The virtual device's HID socket (`keyward vcard --hid-socket PATH`).
pub struct HidSocketDevice {
    stream: UnixStream,
    path: PathBuf,
    /// A report read in part when a read timed out.
    partial: [u8; REPORT_SIZE],
    filled: usize,
}

impl HidSocketDevice {
    /// Connects; a missing socket means the device is not plugged in.
    pub fn open(path: &Path) -> Result<Self, TransportError> {
        let stream = UnixStream::connect(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                TransportError::DeviceRemoved
            }
            _ => TransportError::from(e),
        })?;
        Ok(HidSocketDevice {
            stream,
            path: path.to_path_buf(),
            partial: [0; REPORT_SIZE],
            filled: 0,
        })
    }
}

impl HidReports for HidSocketDevice {
    fn write_report(&mut self, report: &Report) -> Result<(), TransportError> {
        self.stream.write_all(report)?;
        Ok(())
    }

    fn read_report(&mut self, timeout: Duration) -> Result<Option<Report>, TransportError> {
        let deadline = Instant::now() + timeout;
        while self.filled < REPORT_SIZE {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.stream.set_read_timeout(Some(left))?;
            match self.stream.read(&mut self.partial[self.filled..]) {
                Ok(0) => return Err(TransportError::DeviceRemoved),
                Ok(n) => self.filled += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.filled = 0;
        Ok(Some(self.partial))
    }

    fn path(&self) -> String {
        self.path.display().to_string()
    }
}

/// Opens a listed HID device.
pub fn open(info: &HidDeviceInfo) -> Result<Box<dyn HidReports>, TransportError> {
    Ok(match info.kind {
        HidKind::Hidraw => Box::new(HidrawDevice::open(&info.path)?),
        HidKind::Socket => Box::new(HidSocketDevice::open(&info.path)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A YubiKey 5's FIDO interface descriptor.
    const FIDO_DESCRIPTOR: &[u8] = &[
        0x06, 0xD0, 0xF1, 0x09, 0x01, 0xA1, 0x01, 0x09, 0x20, 0x15, 0x00, 0x26, 0xFF, 0x00, 0x75,
        0x08, 0x95, 0x40, 0x81, 0x02, 0x09, 0x21, 0x15, 0x00, 0x26, 0xFF, 0x00, 0x75, 0x08, 0x95,
        0x40, 0x91, 0x02, 0xC0,
    ];
    /// A boot keyboard (generic desktop page 01).
    const KEYBOARD_DESCRIPTOR: &[u8] = &[
        0x05, 0x01, 0x09, 0x06, 0xA1, 0x01, 0x05, 0x07, 0x19, 0xE0, 0x29, 0xE7, 0x15, 0x00, 0x25,
        0x01, 0x75, 0x01, 0x95, 0x08, 0x81, 0x02, 0xC0,
    ];

    #[test]
    fn fido_usage_page_is_recognised() {
        assert!(is_fido_descriptor(FIDO_DESCRIPTOR));
        assert!(!is_fido_descriptor(KEYBOARD_DESCRIPTOR));
        assert!(!is_fido_descriptor(&[0x06, 0xD0]));
        // A long item before the usage page is skipped.
        let mut with_long = vec![0xFE, 0x02, 0x10, 0xAA, 0xBB];
        with_long.extend_from_slice(FIDO_DESCRIPTOR);
        assert!(is_fido_descriptor(&with_long));
        // 0xF1D0 as data of another item is not a usage page.
        assert!(!is_fido_descriptor(&[0x26, 0xD0, 0xF1]));
    }

    #[test]
    fn uevent_gives_usb_ids() {
        let u = parse_uevent(
            "DRIVER=hid-generic\nHID_ID=0003:00001050:00000407\nHID_NAME=Yubico YubiKey OTP+FIDO+CCID\n",
        );
        assert_eq!(u.vendor_id, Some(YUBICO_VENDOR_ID));
        assert_eq!(u.product_id, Some(0x0407));
        assert_eq!(u.name.as_deref(), Some("Yubico YubiKey OTP+FIDO+CCID"));
    }

    #[test]
    fn hidraw_listing_reads_sysfs() {
        let root = tempfile::tempdir().unwrap();
        for (node, desc) in [
            ("hidraw0", KEYBOARD_DESCRIPTOR),
            ("hidraw3", FIDO_DESCRIPTOR),
        ] {
            let dev = root.path().join("class/hidraw").join(node).join("device");
            std::fs::create_dir_all(&dev).unwrap();
            std::fs::write(dev.join("report_descriptor"), desc).unwrap();
            std::fs::write(dev.join("uevent"), "HID_ID=0003:00001050:00000407\n").unwrap();
        }
        let found = list_hidraw(root.path(), Path::new("/dev"));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].path, Path::new("/dev/hidraw3"));
        assert_eq!(found[0].uevent.vendor_id, Some(YUBICO_VENDOR_ID));
        assert!(list_hidraw(&root.path().join("none"), Path::new("/dev")).is_empty());
    }

    #[test]
    fn socket_reports_survive_partial_reads() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut dev = HidSocketDevice {
            stream: a,
            path: "pair".into(),
            partial: [0; REPORT_SIZE],
            filled: 0,
        };
        assert_eq!(dev.read_report(Duration::from_millis(10)).unwrap(), None);
        b.write_all(&[7u8; 10]).unwrap();
        assert_eq!(dev.read_report(Duration::from_millis(20)).unwrap(), None);
        b.write_all(&[7u8; 54]).unwrap();
        assert_eq!(
            dev.read_report(Duration::from_millis(200)).unwrap(),
            Some([7u8; 64])
        );
        drop(b);
        assert_eq!(
            dev.read_report(Duration::from_millis(200)).unwrap_err(),
            TransportError::DeviceRemoved
        );
    }
}
