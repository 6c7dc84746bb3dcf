//! CTAP 2.1 (FIDO Client to Authenticator Protocol) message codec.
//!
//! Pure and shared: the virtual authenticator (keyward-vcard) decodes requests
//! and encodes responses with these types, and Keyward's own client side
//! (issuance engine) encodes requests and decodes responses with the same
//! types, so both ends agree on every key number by construction.
//!
//! * [`command`] and [`StatusCode`]: the command bytes and status codes.
//! * [`encode_canonical`] / [`decode`]: CTAP2-canonical CBOR (map keys sorted
//!   by major type, then encoded length, then bytes; python-fido2 checks this)
//!   and a decoder that turns every malformed input into a CTAP status code.
//!   Kept here over ciborium's values: ciborium writes maps in the order
//!   given and has no canonical mode.
//! * Typed requests and responses (`*Request`, `*Response`) with `to_value` /
//!   `from_value` on both sides.
//! * [`PinProtocol`]: PIN/UV auth protocols 1 and 2 (ECDH P-256 key agreement,
//!   KDF, AES-256-CBC, HMAC-SHA-256), usable from platform and authenticator.

use ciborium::value::{Integer, Value};

/// CTAP2 authenticator command bytes (CTAP 2.1 section 6).
pub mod command {
    pub const MAKE_CREDENTIAL: u8 = 0x01;
    pub const GET_ASSERTION: u8 = 0x02;
    pub const GET_INFO: u8 = 0x04;
    pub const CLIENT_PIN: u8 = 0x06;
    pub const RESET: u8 = 0x07;
    pub const GET_NEXT_ASSERTION: u8 = 0x08;
    pub const BIO_ENROLLMENT: u8 = 0x09;
    pub const CREDENTIAL_MANAGEMENT: u8 = 0x0A;
    pub const SELECTION: u8 = 0x0B;
    pub const LARGE_BLOBS: u8 = 0x0C;
    pub const CONFIG: u8 = 0x0D;
    /// The CTAP 2.1 pre-release number of credentialManagement
    /// (FIDO_2_1_PRE authenticators such as YubiKey 5 before 5.7).
    pub const CREDENTIAL_MANAGEMENT_PREVIEW: u8 = 0x41;
}

/// A CTAP2 status code (CTAP 2.1 section 8.2). `0x00` is success.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatusCode(pub u8);

impl StatusCode {
    pub const OK: Self = Self(0x00);
    pub const ERR_INVALID_COMMAND: Self = Self(0x01);
    pub const ERR_INVALID_PARAMETER: Self = Self(0x02);
    pub const ERR_INVALID_LENGTH: Self = Self(0x03);
    pub const ERR_INVALID_SEQ: Self = Self(0x04);
    pub const ERR_TIMEOUT: Self = Self(0x05);
    pub const ERR_CHANNEL_BUSY: Self = Self(0x06);
    pub const ERR_LOCK_REQUIRED: Self = Self(0x0A);
    pub const ERR_INVALID_CHANNEL: Self = Self(0x0B);
    pub const ERR_CBOR_UNEXPECTED_TYPE: Self = Self(0x11);
    pub const ERR_INVALID_CBOR: Self = Self(0x12);
    pub const ERR_MISSING_PARAMETER: Self = Self(0x14);
    pub const ERR_LIMIT_EXCEEDED: Self = Self(0x15);
    pub const ERR_FP_DATABASE_FULL: Self = Self(0x17);
    pub const ERR_LARGE_BLOB_STORAGE_FULL: Self = Self(0x18);
    pub const ERR_CREDENTIAL_EXCLUDED: Self = Self(0x19);
    pub const ERR_PROCESSING: Self = Self(0x21);
    pub const ERR_INVALID_CREDENTIAL: Self = Self(0x22);
    pub const ERR_USER_ACTION_PENDING: Self = Self(0x23);
    pub const ERR_OPERATION_PENDING: Self = Self(0x24);
    pub const ERR_NO_OPERATIONS: Self = Self(0x25);
    pub const ERR_UNSUPPORTED_ALGORITHM: Self = Self(0x26);
    pub const ERR_OPERATION_DENIED: Self = Self(0x27);
    pub const ERR_KEY_STORE_FULL: Self = Self(0x28);
    pub const ERR_UNSUPPORTED_OPTION: Self = Self(0x2B);
    pub const ERR_INVALID_OPTION: Self = Self(0x2C);
    pub const ERR_KEEPALIVE_CANCEL: Self = Self(0x2D);
    pub const ERR_NO_CREDENTIALS: Self = Self(0x2E);
    pub const ERR_USER_ACTION_TIMEOUT: Self = Self(0x2F);
    pub const ERR_NOT_ALLOWED: Self = Self(0x30);
    pub const ERR_PIN_INVALID: Self = Self(0x31);
    pub const ERR_PIN_BLOCKED: Self = Self(0x32);
    pub const ERR_PIN_AUTH_INVALID: Self = Self(0x33);
    pub const ERR_PIN_AUTH_BLOCKED: Self = Self(0x34);
    pub const ERR_PIN_NOT_SET: Self = Self(0x35);
    pub const ERR_PUAT_REQUIRED: Self = Self(0x36);
    pub const ERR_PIN_POLICY_VIOLATION: Self = Self(0x37);
    pub const ERR_REQUEST_TOO_LARGE: Self = Self(0x39);
    pub const ERR_ACTION_TIMEOUT: Self = Self(0x3A);
    pub const ERR_UP_REQUIRED: Self = Self(0x3B);
    pub const ERR_UV_BLOCKED: Self = Self(0x3C);
    pub const ERR_INTEGRITY_FAILURE: Self = Self(0x3D);
    pub const ERR_INVALID_SUBCOMMAND: Self = Self(0x3E);
    pub const ERR_UV_INVALID: Self = Self(0x3F);
    pub const ERR_UNAUTHORIZED_PERMISSION: Self = Self(0x40);
    pub const ERR_OTHER: Self = Self(0x7F);

    /// The name the CTAP specification gives this code.
    pub fn name(self) -> &'static str {
        match self.0 {
            0x00 => "CTAP2_OK",
            0x01 => "CTAP1_ERR_INVALID_COMMAND",
            0x02 => "CTAP1_ERR_INVALID_PARAMETER",
            0x03 => "CTAP1_ERR_INVALID_LENGTH",
            0x04 => "CTAP1_ERR_INVALID_SEQ",
            0x05 => "CTAP1_ERR_TIMEOUT",
            0x06 => "CTAP1_ERR_CHANNEL_BUSY",
            0x0A => "CTAP1_ERR_LOCK_REQUIRED",
            0x0B => "CTAP1_ERR_INVALID_CHANNEL",
            0x11 => "CTAP2_ERR_CBOR_UNEXPECTED_TYPE",
            0x12 => "CTAP2_ERR_INVALID_CBOR",
            0x14 => "CTAP2_ERR_MISSING_PARAMETER",
            0x15 => "CTAP2_ERR_LIMIT_EXCEEDED",
            0x17 => "CTAP2_ERR_FP_DATABASE_FULL",
            0x18 => "CTAP2_ERR_LARGE_BLOB_STORAGE_FULL",
            0x19 => "CTAP2_ERR_CREDENTIAL_EXCLUDED",
            0x21 => "CTAP2_ERR_PROCESSING",
            0x22 => "CTAP2_ERR_INVALID_CREDENTIAL",
            0x23 => "CTAP2_ERR_USER_ACTION_PENDING",
            0x24 => "CTAP2_ERR_OPERATION_PENDING",
            0x25 => "CTAP2_ERR_NO_OPERATIONS",
            0x26 => "CTAP2_ERR_UNSUPPORTED_ALGORITHM",
            0x27 => "CTAP2_ERR_OPERATION_DENIED",
            0x28 => "CTAP2_ERR_KEY_STORE_FULL",
            0x2B => "CTAP2_ERR_UNSUPPORTED_OPTION",
            0x2C => "CTAP2_ERR_INVALID_OPTION",
            0x2D => "CTAP2_ERR_KEEPALIVE_CANCEL",
            0x2E => "CTAP2_ERR_NO_CREDENTIALS",
            0x2F => "CTAP2_ERR_USER_ACTION_TIMEOUT",
            0x30 => "CTAP2_ERR_NOT_ALLOWED",
            0x31 => "CTAP2_ERR_PIN_INVALID",
            0x32 => "CTAP2_ERR_PIN_BLOCKED",
            0x33 => "CTAP2_ERR_PIN_AUTH_INVALID",
            0x34 => "CTAP2_ERR_PIN_AUTH_BLOCKED",
            0x35 => "CTAP2_ERR_PIN_NOT_SET",
            0x36 => "CTAP2_ERR_PUAT_REQUIRED",
            0x37 => "CTAP2_ERR_PIN_POLICY_VIOLATION",
            0x39 => "CTAP2_ERR_REQUEST_TOO_LARGE",
            0x3A => "CTAP2_ERR_ACTION_TIMEOUT",
            0x3B => "CTAP2_ERR_UP_REQUIRED",
            0x3C => "CTAP2_ERR_UV_BLOCKED",
            0x3D => "CTAP2_ERR_INTEGRITY_FAILURE",
            0x3E => "CTAP2_ERR_INVALID_SUBCOMMAND",
            0x3F => "CTAP2_ERR_UV_INVALID",
            0x40 => "CTAP2_ERR_UNAUTHORIZED_PERMISSION",
            0x7F => "CTAP1_ERR_OTHER",
            _ => "CTAP2_ERR_UNKNOWN",
        }
    }
}

impl std::fmt::Debug for StatusCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}(0x{:02X})", self.name(), self.0)
    }
}

impl std::fmt::Display for StatusCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// A decoding or protocol error: the CTAP status code to answer with, and a
/// short human explanation (never containing secrets).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {detail}")]
pub struct CtapError {
    pub status: StatusCode,
    pub detail: String,
}

impl CtapError {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
        }
    }
}

impl From<StatusCode> for CtapError {
    fn from(status: StatusCode) -> Self {
        Self::new(status, status.name())
    }
}

pub type Result<T> = std::result::Result<T, CtapError>;

// ---------------------------------------------------------------------------
// Canonical CBOR
// ---------------------------------------------------------------------------

/// Nesting depth accepted when decoding. CTAP messages nest at most four
/// levels; the bound keeps hostile input from exhausting the stack.
const MAX_DEPTH: usize = 16;

/// Encodes `value` as CTAP2-canonical CBOR (CTAP 2.1 section 8, "CTAP2
/// canonical CBOR encoding form"): definite lengths, shortest integer
/// encodings (ciborium's default) and every map's keys sorted by major type,
/// then by encoded length, then byte-wise.
pub fn encode_canonical(value: &Value) -> Vec<u8> {
    let canonical = canonicalize(value.clone());
    let mut out = Vec::new();
    // Writing into a Vec cannot fail for a Value tree.
    ciborium::ser::into_writer(&canonical, &mut out).expect("CBOR encoding into a Vec");
    out
}

fn encoded(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(value, &mut out).expect("CBOR encoding into a Vec");
    out
}

/// The CTAP2 canonical sort key of an already canonical map key.
fn key_order(bytes: &[u8]) -> (u8, usize, &[u8]) {
    (bytes.first().map_or(0, |b| b >> 5), bytes.len(), bytes)
}

/// Sorts every map in `value` (recursively) into CTAP2 canonical order.
pub fn canonicalize(value: Value) -> Value {
    match value {
        Value::Array(items) => Value::Array(items.into_iter().map(canonicalize).collect()),
        Value::Tag(tag, inner) => Value::Tag(tag, Box::new(canonicalize(*inner))),
        Value::Map(entries) => {
            let mut keyed: Vec<(Vec<u8>, Value, Value)> = entries
                .into_iter()
                .map(|(k, v)| {
                    let k = canonicalize(k);
                    (encoded(&k), k, canonicalize(v))
                })
                .collect();
            keyed.sort_by(|a, b| key_order(&a.0).cmp(&key_order(&b.0)));
            Value::Map(keyed.into_iter().map(|(_, k, v)| (k, v)).collect())
        }
        other => other,
    }
}

/// True if every map in `value` is in CTAP2 canonical key order with no
/// duplicate keys.
pub fn is_canonical(value: &Value) -> bool {
    match value {
        Value::Array(items) => items.iter().all(is_canonical),
        Value::Tag(_, inner) => is_canonical(inner),
        Value::Map(entries) => {
            let keys: Vec<Vec<u8>> = entries.iter().map(|(k, _)| encoded(k)).collect();
            keys.windows(2).all(|w| key_order(&w[0]) < key_order(&w[1]))
                && entries
                    .iter()
                    .all(|(k, v)| is_canonical(k) && is_canonical(v))
        }
        _ => true,
    }
}

/// Decodes one CBOR data item that must fill `bytes` exactly. Malformed,
/// truncated or trailing input, floats inside maps' keys, duplicate map keys
/// and excessive nesting all give `CTAP2_ERR_INVALID_CBOR`.
pub fn decode(bytes: &[u8]) -> Result<Value> {
    let mut reader = bytes;
    let value: Value = ciborium::de::from_reader_with_recursion_limit(&mut reader, MAX_DEPTH)
        .map_err(|e| {
            CtapError::new(StatusCode::ERR_INVALID_CBOR, format!("malformed CBOR: {e}"))
        })?;
    if !reader.is_empty() {
        return Err(CtapError::new(
            StatusCode::ERR_INVALID_CBOR,
            format!("{} bytes after the CBOR data item", reader.len()),
        ));
    }
    check_no_duplicate_keys(&value)?;
    Ok(value)
}

fn check_no_duplicate_keys(value: &Value) -> Result<()> {
    match value {
        Value::Array(items) => items.iter().try_for_each(check_no_duplicate_keys),
        Value::Tag(_, inner) => check_no_duplicate_keys(inner),
        Value::Map(entries) => {
            let mut keys: Vec<Vec<u8>> = entries.iter().map(|(k, _)| encoded(k)).collect();
            keys.sort();
            if keys.windows(2).any(|w| w[0] == w[1]) {
                return Err(CtapError::new(
                    StatusCode::ERR_INVALID_CBOR,
                    "duplicate map key",
                ));
            }
            entries.iter().try_for_each(|(k, v)| {
                check_no_duplicate_keys(k)?;
                check_no_duplicate_keys(v)
            })
        }
        _ => Ok(()),
    }
}

/// Splits a CTAP request (command byte followed by optional CBOR parameters).
pub fn split_request(request: &[u8]) -> Result<(u8, Option<Value>)> {
    let (&cmd, params) = request
        .split_first()
        .ok_or_else(|| CtapError::new(StatusCode::ERR_INVALID_LENGTH, "empty CTAP request"))?;
    if params.is_empty() {
        Ok((cmd, None))
    } else {
        Ok((cmd, Some(decode(params)?)))
    }
}

/// Builds a CTAP request: command byte, then the canonical CBOR of `params`.
pub fn encode_request(cmd: u8, params: Option<&Value>) -> Vec<u8> {
    let mut out = vec![cmd];
    if let Some(p) = params {
        out.extend(encode_canonical(p));
    }
    out
}

/// Builds a CTAP response: status byte, then the canonical CBOR body if any.
pub fn encode_response(status: StatusCode, body: Option<&Value>) -> Vec<u8> {
    let mut out = vec![status.0];
    if let Some(b) = body {
        out.extend(encode_canonical(b));
    }
    out
}

/// Splits a CTAP response into status and decoded body. A non-zero status is
/// returned as an error.
pub fn split_response(response: &[u8]) -> Result<Option<Value>> {
    let (&status, body) = response
        .split_first()
        .ok_or_else(|| CtapError::new(StatusCode::ERR_INVALID_LENGTH, "empty CTAP response"))?;
    if status != 0 {
        return Err(StatusCode(status).into());
    }
    if body.is_empty() {
        Ok(None)
    } else {
        Ok(Some(decode(body)?))
    }
}

// ---------------------------------------------------------------------------
// Value helpers
// ---------------------------------------------------------------------------

fn int(i: i64) -> Value {
    Value::Integer(i.into())
}

fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

fn unexpected(what: &str) -> CtapError {
    CtapError::new(
        StatusCode::ERR_CBOR_UNEXPECTED_TYPE,
        format!("{what} has the wrong CBOR type"),
    )
}

fn missing(what: &str) -> CtapError {
    CtapError::new(
        StatusCode::ERR_MISSING_PARAMETER,
        format!("{what} is missing"),
    )
}

fn as_i64(v: &Value, what: &str) -> Result<i64> {
    match v {
        Value::Integer(i) => i64::try_from(*i).map_err(|_| {
            CtapError::new(
                StatusCode::ERR_INVALID_PARAMETER,
                format!("{what} out of range"),
            )
        }),
        _ => Err(unexpected(what)),
    }
}

fn as_bytes(v: &Value, what: &str) -> Result<Vec<u8>> {
    match v {
        Value::Bytes(b) => Ok(b.clone()),
        _ => Err(unexpected(what)),
    }
}

fn as_text(v: &Value, what: &str) -> Result<String> {
    match v {
        Value::Text(s) => Ok(s.clone()),
        _ => Err(unexpected(what)),
    }
}

fn as_bool(v: &Value, what: &str) -> Result<bool> {
    match v {
        Value::Bool(b) => Ok(*b),
        _ => Err(unexpected(what)),
    }
}

fn as_array<'a>(v: &'a Value, what: &str) -> Result<&'a [Value]> {
    match v {
        Value::Array(a) => Ok(a),
        _ => Err(unexpected(what)),
    }
}

/// Read access to a CBOR map, by integer or text key.
pub struct MapView<'a> {
    entries: &'a [(Value, Value)],
    what: &'static str,
}

impl<'a> MapView<'a> {
    pub fn new(value: &'a Value, what: &'static str) -> Result<Self> {
        match value {
            Value::Map(entries) => Ok(Self { entries, what }),
            _ => Err(unexpected(what)),
        }
    }

    pub fn get_int(&self, key: i64) -> Option<&'a Value> {
        let key = Integer::from(key);
        self.entries.iter().find_map(|(k, v)| match k {
            Value::Integer(i) if *i == key => Some(v),
            _ => None,
        })
    }

    pub fn get_text(&self, key: &str) -> Option<&'a Value> {
        self.entries.iter().find_map(|(k, v)| match k {
            Value::Text(t) if t == key => Some(v),
            _ => None,
        })
    }

    fn req<T>(
        &self,
        v: Option<&'a Value>,
        name: &str,
        f: fn(&Value, &str) -> Result<T>,
    ) -> Result<T> {
        let full = format!("{}.{}", self.what, name);
        match v {
            Some(v) => f(v, &full),
            None => Err(missing(&full)),
        }
    }

    fn opt<T>(
        &self,
        v: Option<&'a Value>,
        name: &str,
        f: fn(&Value, &str) -> Result<T>,
    ) -> Result<Option<T>> {
        let full = format!("{}.{}", self.what, name);
        v.map(|v| f(v, &full)).transpose()
    }

    pub fn int_bytes(&self, key: i64, name: &str) -> Result<Vec<u8>> {
        self.req(self.get_int(key), name, as_bytes)
    }
    pub fn int_bytes_opt(&self, key: i64, name: &str) -> Result<Option<Vec<u8>>> {
        self.opt(self.get_int(key), name, as_bytes)
    }
    pub fn int_i64(&self, key: i64, name: &str) -> Result<i64> {
        self.req(self.get_int(key), name, as_i64)
    }
    pub fn int_i64_opt(&self, key: i64, name: &str) -> Result<Option<i64>> {
        self.opt(self.get_int(key), name, as_i64)
    }
    pub fn int_text(&self, key: i64, name: &str) -> Result<String> {
        self.req(self.get_int(key), name, as_text)
    }
    pub fn int_text_opt(&self, key: i64, name: &str) -> Result<Option<String>> {
        self.opt(self.get_int(key), name, as_text)
    }
    pub fn int_bool_opt(&self, key: i64, name: &str) -> Result<Option<bool>> {
        self.opt(self.get_int(key), name, as_bool)
    }
    pub fn text_text(&self, key: &str) -> Result<String> {
        self.req(self.get_text(key), key, as_text)
    }
    pub fn text_text_opt(&self, key: &str) -> Result<Option<String>> {
        self.opt(self.get_text(key), key, as_text)
    }
    pub fn text_bytes_opt(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.opt(self.get_text(key), key, as_bytes)
    }
    pub fn text_bytes(&self, key: &str) -> Result<Vec<u8>> {
        self.req(self.get_text(key), key, as_bytes)
    }
    pub fn text_i64(&self, key: &str) -> Result<i64> {
        self.req(self.get_text(key), key, as_i64)
    }
    pub fn text_bool_opt(&self, key: &str) -> Result<Option<bool>> {
        self.opt(self.get_text(key), key, as_bool)
    }
}

/// Builds a CBOR map from integer keys, skipping absent values.
struct MapBuilder(Vec<(Value, Value)>);

impl MapBuilder {
    fn new() -> Self {
        Self(Vec::new())
    }
    fn put(mut self, key: i64, v: impl Into<Option<Value>>) -> Self {
        if let Some(v) = v.into() {
            self.0.push((int(key), v));
        }
        self
    }
    fn put_text(mut self, key: &str, v: impl Into<Option<Value>>) -> Self {
        if let Some(v) = v.into() {
            self.0.push((text(key), v));
        }
        self
    }
    fn build(self) -> Value {
        Value::Map(self.0)
    }
}

fn opt_bytes(v: &Option<Vec<u8>>) -> Option<Value> {
    v.as_ref().map(|b| Value::Bytes(b.clone()))
}
fn opt_text(v: &Option<String>) -> Option<Value> {
    v.as_ref().map(|s| text(s))
}
fn opt_int(v: Option<i64>) -> Option<Value> {
    v.map(int)
}

// ---------------------------------------------------------------------------
// Common structures
// ---------------------------------------------------------------------------

/// COSE algorithm identifiers used here.
pub mod cose {
    /// ECDSA with SHA-256 on P-256.
    pub const ES256: i64 = -7;
    /// ECDH-ES + HKDF-256, the algorithm label of a PIN protocol key agreement key.
    pub const ECDH_ES_HKDF_256: i64 = -25;
    pub const KTY_EC2: i64 = 2;
    pub const CRV_P256: i64 = 1;
}

/// A COSE_Key holding a P-256 public key (kty EC2, crv P-256).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoseEc2Key {
    pub alg: i64,
    pub x: [u8; 32],
    pub y: [u8; 32],
}

impl CoseEc2Key {
    pub fn to_value(&self) -> Value {
        MapBuilder::new()
            .put(1, int(cose::KTY_EC2))
            .put(3, int(self.alg))
            .put(-1, int(cose::CRV_P256))
            .put(-2, Value::Bytes(self.x.to_vec()))
            .put(-3, Value::Bytes(self.y.to_vec()))
            .build()
    }

    pub fn from_value(v: &Value) -> Result<Self> {
        let m = MapView::new(v, "COSE_Key")?;
        let kty = m.int_i64(1, "kty")?;
        let crv = m.int_i64(-1, "crv")?;
        if kty != cose::KTY_EC2 || crv != cose::CRV_P256 {
            return Err(CtapError::new(
                StatusCode::ERR_UNSUPPORTED_ALGORITHM,
                "COSE_Key is not an EC2 P-256 key",
            ));
        }
        let alg = m.int_i64_opt(3, "alg")?.unwrap_or(cose::ECDH_ES_HKDF_256);
        let coord = |key: i64, name: &str| -> Result<[u8; 32]> {
            m.int_bytes(key, name)?.try_into().map_err(|_| {
                CtapError::new(
                    StatusCode::ERR_INVALID_PARAMETER,
                    format!("COSE_Key.{name} is not 32 bytes"),
                )
            })
        };
        Ok(Self {
            alg,
            x: coord(-2, "x")?,
            y: coord(-3, "y")?,
        })
    }

    /// The uncompressed SEC1 point (0x04 || x || y).
    pub fn to_sec1(&self) -> Vec<u8> {
        let mut out = vec![0x04];
        out.extend_from_slice(&self.x);
        out.extend_from_slice(&self.y);
        out
    }

    pub fn from_public_key(pk: &p256::PublicKey, alg: i64) -> Self {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        let point = pk.to_encoded_point(false);
        let mut x = [0u8; 32];
        let mut y = [0u8; 32];
        x.copy_from_slice(point.x().expect("uncompressed point"));
        y.copy_from_slice(point.y().expect("uncompressed point"));
        Self { alg, x, y }
    }

    pub fn to_public_key(&self) -> Result<p256::PublicKey> {
        p256::PublicKey::from_sec1_bytes(&self.to_sec1()).map_err(|_| {
            CtapError::new(
                StatusCode::ERR_INVALID_PARAMETER,
                "COSE_Key is not a point on P-256",
            )
        })
    }
}

/// PublicKeyCredentialRpEntity.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RpEntity {
    pub id: String,
    pub name: Option<String>,
}

impl RpEntity {
    pub fn to_value(&self) -> Value {
        MapBuilder::new()
            .put_text("id", text(&self.id))
            .put_text("name", opt_text(&self.name))
            .build()
    }
    pub fn from_value(v: &Value) -> Result<Self> {
        let m = MapView::new(v, "rp")?;
        Ok(Self {
            id: m.text_text("id")?,
            name: m.text_text_opt("name")?,
        })
    }
}

/// PublicKeyCredentialUserEntity.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserEntity {
    pub id: Vec<u8>,
    pub name: Option<String>,
    pub display_name: Option<String>,
}

impl UserEntity {
    pub fn to_value(&self) -> Value {
        MapBuilder::new()
            .put_text("id", Value::Bytes(self.id.clone()))
            .put_text("name", opt_text(&self.name))
            .put_text("displayName", opt_text(&self.display_name))
            .build()
    }
    pub fn from_value(v: &Value) -> Result<Self> {
        let m = MapView::new(v, "user")?;
        let id = m.text_bytes("id")?;
        if id.len() > 64 {
            return Err(CtapError::new(
                StatusCode::ERR_INVALID_LENGTH,
                "user.id longer than 64 bytes",
            ));
        }
        Ok(Self {
            id,
            name: m.text_text_opt("name")?,
            display_name: m.text_text_opt("displayName")?,
        })
    }
}

/// PublicKeyCredentialDescriptor (type "public-key").
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CredentialDescriptor {
    pub id: Vec<u8>,
}

impl CredentialDescriptor {
    pub fn to_value(&self) -> Value {
        MapBuilder::new()
            .put_text("id", Value::Bytes(self.id.clone()))
            .put_text("type", text("public-key"))
            .build()
    }
    /// Decodes a descriptor; `Ok(None)` for a descriptor of another type,
    /// which CTAP says to ignore.
    pub fn from_value(v: &Value) -> Result<Option<Self>> {
        let m = MapView::new(v, "PublicKeyCredentialDescriptor")?;
        let ty = m.text_text("type")?;
        let id = m.text_bytes("id")?;
        Ok((ty == "public-key").then_some(Self { id }))
    }
}

fn descriptor_list(v: Option<&Value>, what: &str) -> Result<Option<Vec<CredentialDescriptor>>> {
    let Some(v) = v else { return Ok(None) };
    let mut out = Vec::new();
    for item in as_array(v, what)? {
        if let Some(d) = CredentialDescriptor::from_value(item)? {
            out.push(d);
        }
    }
    Ok(Some(out))
}

fn descriptor_list_value(list: &Option<Vec<CredentialDescriptor>>) -> Option<Value> {
    list.as_ref()
        .map(|l| Value::Array(l.iter().map(CredentialDescriptor::to_value).collect()))
}

/// The "options" map of makeCredential and getAssertion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RequestOptions {
    pub rk: Option<bool>,
    pub up: Option<bool>,
    pub uv: Option<bool>,
}

impl RequestOptions {
    fn to_value(self) -> Option<Value> {
        if self.rk.is_none() && self.up.is_none() && self.uv.is_none() {
            return None;
        }
        Some(
            MapBuilder::new()
                .put_text("rk", self.rk.map(Value::Bool))
                .put_text("up", self.up.map(Value::Bool))
                .put_text("uv", self.uv.map(Value::Bool))
                .build(),
        )
    }
    fn from_value(v: Option<&Value>) -> Result<Self> {
        let Some(v) = v else {
            return Ok(Self::default());
        };
        let m = MapView::new(v, "options")?;
        Ok(Self {
            rk: m.text_bool_opt("rk")?,
            up: m.text_bool_opt("up")?,
            uv: m.text_bool_opt("uv")?,
        })
    }
}

/// Extension identifiers.
pub mod extension {
    pub const CRED_PROTECT: &str = "credProtect";
    pub const HMAC_SECRET: &str = "hmac-secret";
}

/// credProtect policy values (CTAP 2.1 section 12.1).
pub mod cred_protect {
    pub const USER_VERIFICATION_OPTIONAL: u8 = 1;
    pub const USER_VERIFICATION_OPTIONAL_WITH_CREDENTIAL_ID_LIST: u8 = 2;
    pub const USER_VERIFICATION_REQUIRED: u8 = 3;
}

// ---------------------------------------------------------------------------
// authenticatorGetInfo (0x04)
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GetInfoResponse {
    pub versions: Vec<String>,
    pub extensions: Vec<String>,
    pub aaguid: [u8; 16],
    /// Options in the order given; encoding sorts them canonically.
    pub options: Vec<(String, bool)>,
    pub max_msg_size: Option<u64>,
    pub pin_uv_auth_protocols: Vec<u8>,
    pub max_credential_count_in_list: Option<u64>,
    pub max_credential_id_length: Option<u64>,
    pub transports: Vec<String>,
    /// COSE algorithms of the "public-key" entries, e.g. -7 (ES256).
    pub algorithms: Vec<i64>,
    pub min_pin_length: Option<u64>,
    pub firmware_version: Option<u64>,
    pub remaining_discoverable_credentials: Option<u64>,
}

impl GetInfoResponse {
    pub fn option(&self, name: &str) -> Option<bool> {
        self.options
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }

    pub fn to_value(&self) -> Value {
        let list = |l: &Vec<String>| {
            (!l.is_empty()).then(|| Value::Array(l.iter().map(|s| text(s)).collect()))
        };
        MapBuilder::new()
            .put(
                0x01,
                Value::Array(self.versions.iter().map(|s| text(s)).collect()),
            )
            .put(0x02, list(&self.extensions))
            .put(0x03, Value::Bytes(self.aaguid.to_vec()))
            .put(
                0x04,
                (!self.options.is_empty()).then(|| {
                    Value::Map(
                        self.options
                            .iter()
                            .map(|(k, v)| (text(k), Value::Bool(*v)))
                            .collect(),
                    )
                }),
            )
            .put(0x05, self.max_msg_size.map(|v| int(v as i64)))
            .put(
                0x06,
                (!self.pin_uv_auth_protocols.is_empty()).then(|| {
                    Value::Array(
                        self.pin_uv_auth_protocols
                            .iter()
                            .map(|p| int(*p as i64))
                            .collect(),
                    )
                }),
            )
            .put(
                0x07,
                self.max_credential_count_in_list.map(|v| int(v as i64)),
            )
            .put(0x08, self.max_credential_id_length.map(|v| int(v as i64)))
            .put(0x09, list(&self.transports))
            .put(
                0x0A,
                (!self.algorithms.is_empty()).then(|| {
                    Value::Array(
                        self.algorithms
                            .iter()
                            .map(|a| {
                                MapBuilder::new()
                                    .put_text("alg", int(*a))
                                    .put_text("type", text("public-key"))
                                    .build()
                            })
                            .collect(),
                    )
                }),
            )
            .put(0x0D, self.min_pin_length.map(|v| int(v as i64)))
            .put(0x0E, self.firmware_version.map(|v| int(v as i64)))
            .put(
                0x14,
                self.remaining_discoverable_credentials
                    .map(|v| int(v as i64)),
            )
            .build()
    }

    pub fn from_value(v: &Value) -> Result<Self> {
        let m = MapView::new(v, "authenticatorGetInfo response")?;
        let strings = |key: i64, name: &str| -> Result<Vec<String>> {
            match m.get_int(key) {
                None => Ok(Vec::new()),
                Some(v) => as_array(v, name)?
                    .iter()
                    .map(|s| as_text(s, name))
                    .collect(),
            }
        };
        let uint = |key: i64, name: &str| -> Result<Option<u64>> {
            m.int_i64_opt(key, name)?
                .map(|v| {
                    u64::try_from(v).map_err(|_| {
                        CtapError::new(
                            StatusCode::ERR_INVALID_PARAMETER,
                            format!("{name} negative"),
                        )
                    })
                })
                .transpose()
        };
        let aaguid = m.int_bytes(0x03, "aaguid")?.try_into().map_err(|_| {
            CtapError::new(StatusCode::ERR_INVALID_LENGTH, "aaguid is not 16 bytes")
        })?;
        let mut options = Vec::new();
        if let Some(o) = m.get_int(0x04) {
            let Value::Map(entries) = o else {
                return Err(unexpected("options"));
            };
            for (k, v) in entries {
                options.push((as_text(k, "option name")?, as_bool(v, "option value")?));
            }
        }
        let mut pin_uv_auth_protocols = Vec::new();
        if let Some(p) = m.get_int(0x06) {
            for item in as_array(p, "pinUvAuthProtocols")? {
                let n = as_i64(item, "pinUvAuthProtocols")?;
                pin_uv_auth_protocols
                    .push(u8::try_from(n).map_err(|_| unexpected("pinUvAuthProtocols"))?);
            }
        }
        let mut algorithms = Vec::new();
        if let Some(a) = m.get_int(0x0A) {
            for item in as_array(a, "algorithms")? {
                algorithms.push(MapView::new(item, "algorithm")?.text_i64("alg")?);
            }
        }
        Ok(Self {
            versions: strings(0x01, "versions")?,
            extensions: strings(0x02, "extensions")?,
            aaguid,
            options,
            max_msg_size: uint(0x05, "maxMsgSize")?,
            pin_uv_auth_protocols,
            max_credential_count_in_list: uint(0x07, "maxCredentialCountInList")?,
            max_credential_id_length: uint(0x08, "maxCredentialIdLength")?,
            transports: strings(0x09, "transports")?,
            algorithms,
            min_pin_length: uint(0x0D, "minPINLength")?,
            firmware_version: uint(0x0E, "firmwareVersion")?,
            remaining_discoverable_credentials: uint(0x14, "remainingDiscoverableCredentials")?,
        })
    }
}

// ---------------------------------------------------------------------------
// authenticatorMakeCredential (0x01)
// ---------------------------------------------------------------------------

/// Extension inputs of makeCredential understood here.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MakeCredentialExtensions {
    pub cred_protect: Option<u8>,
    pub hmac_secret: Option<bool>,
}

impl MakeCredentialExtensions {
    fn to_value(&self) -> Option<Value> {
        if self.cred_protect.is_none() && self.hmac_secret.is_none() {
            return None;
        }
        Some(
            MapBuilder::new()
                .put_text(
                    extension::CRED_PROTECT,
                    self.cred_protect.map(|c| int(c as i64)),
                )
                .put_text(extension::HMAC_SECRET, self.hmac_secret.map(Value::Bool))
                .build(),
        )
    }
    fn from_value(v: Option<&Value>) -> Result<Self> {
        let Some(v) = v else {
            return Ok(Self::default());
        };
        let m = MapView::new(v, "extensions")?;
        let cred_protect = match m.get_text(extension::CRED_PROTECT) {
            None => None,
            Some(v) => {
                let n = as_i64(v, "credProtect")?;
                if !(1..=3).contains(&n) {
                    return Err(CtapError::new(
                        StatusCode::ERR_INVALID_OPTION,
                        "credProtect must be 1, 2 or 3",
                    ));
                }
                Some(n as u8)
            }
        };
        Ok(Self {
            cred_protect,
            hmac_secret: m.text_bool_opt(extension::HMAC_SECRET)?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MakeCredentialRequest {
    pub client_data_hash: Vec<u8>,
    pub rp: RpEntity,
    pub user: UserEntity,
    /// COSE algorithms of the "public-key" entries of pubKeyCredParams, in order.
    pub algorithms: Vec<i64>,
    pub exclude_list: Option<Vec<CredentialDescriptor>>,
    pub extensions: MakeCredentialExtensions,
    pub options: RequestOptions,
    pub pin_uv_auth_param: Option<Vec<u8>>,
    pub pin_uv_auth_protocol: Option<i64>,
    pub enterprise_attestation: Option<i64>,
}

impl MakeCredentialRequest {
    pub fn to_value(&self) -> Value {
        MapBuilder::new()
            .put(0x01, Value::Bytes(self.client_data_hash.clone()))
            .put(0x02, self.rp.to_value())
            .put(0x03, self.user.to_value())
            .put(
                0x04,
                Value::Array(
                    self.algorithms
                        .iter()
                        .map(|a| {
                            MapBuilder::new()
                                .put_text("alg", int(*a))
                                .put_text("type", text("public-key"))
                                .build()
                        })
                        .collect(),
                ),
            )
            .put(0x05, descriptor_list_value(&self.exclude_list))
            .put(0x06, self.extensions.to_value())
            .put(0x07, self.options.to_value())
            .put(0x08, opt_bytes(&self.pin_uv_auth_param))
            .put(0x09, opt_int(self.pin_uv_auth_protocol))
            .put(0x0A, opt_int(self.enterprise_attestation))
            .build()
    }

    pub fn from_value(v: &Value) -> Result<Self> {
        let m = MapView::new(v, "authenticatorMakeCredential")?;
        let client_data_hash = m.int_bytes(0x01, "clientDataHash")?;
        let rp = RpEntity::from_value(m.get_int(0x02).ok_or_else(|| missing("rp"))?)?;
        let user = UserEntity::from_value(m.get_int(0x03).ok_or_else(|| missing("user"))?)?;
        let params = m.get_int(0x04).ok_or_else(|| missing("pubKeyCredParams"))?;
        let mut algorithms = Vec::new();
        for p in as_array(params, "pubKeyCredParams")? {
            let pm = MapView::new(p, "PublicKeyCredentialParameters")?;
            let alg = pm.text_i64("alg")?;
            if pm.text_text("type")? == "public-key" {
                algorithms.push(alg);
            }
        }
        Ok(Self {
            client_data_hash,
            rp,
            user,
            algorithms,
            exclude_list: descriptor_list(m.get_int(0x05), "excludeList")?,
            extensions: MakeCredentialExtensions::from_value(m.get_int(0x06))?,
            options: RequestOptions::from_value(m.get_int(0x07))?,
            pin_uv_auth_param: m.int_bytes_opt(0x08, "pinUvAuthParam")?,
            pin_uv_auth_protocol: m.int_i64_opt(0x09, "pinUvAuthProtocol")?,
            enterprise_attestation: m.int_i64_opt(0x0A, "enterpriseAttestation")?,
        })
    }
}

/// A "packed" attestation statement (WebAuthn section 8.2).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PackedAttestation {
    pub alg: i64,
    pub sig: Vec<u8>,
    /// DER certificates, attestation certificate first.
    pub x5c: Vec<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MakeCredentialResponse {
    pub fmt: String,
    pub auth_data: Vec<u8>,
    pub att_stmt: PackedAttestation,
}

impl MakeCredentialResponse {
    pub fn to_value(&self) -> Value {
        let mut stmt = MapBuilder::new()
            .put_text("alg", int(self.att_stmt.alg))
            .put_text("sig", Value::Bytes(self.att_stmt.sig.clone()));
        if !self.att_stmt.x5c.is_empty() {
            stmt = stmt.put_text(
                "x5c",
                Value::Array(
                    self.att_stmt
                        .x5c
                        .iter()
                        .map(|c| Value::Bytes(c.clone()))
                        .collect(),
                ),
            );
        }
        MapBuilder::new()
            .put(0x01, text(&self.fmt))
            .put(0x02, Value::Bytes(self.auth_data.clone()))
            .put(0x03, stmt.build())
            .build()
    }

    pub fn from_value(v: &Value) -> Result<Self> {
        let m = MapView::new(v, "authenticatorMakeCredential response")?;
        let stmt_v = m.get_int(0x03).ok_or_else(|| missing("attStmt"))?;
        let s = MapView::new(stmt_v, "attStmt")?;
        let x5c = match s.get_text("x5c") {
            None => Vec::new(),
            Some(a) => as_array(a, "x5c")?
                .iter()
                .map(|c| as_bytes(c, "x5c"))
                .collect::<Result<_>>()?,
        };
        let att_stmt = if m.int_text(0x01, "fmt")? == "none" {
            PackedAttestation::default()
        } else {
            PackedAttestation {
                alg: s.text_i64("alg")?,
                sig: s.text_bytes("sig")?,
                x5c,
            }
        };
        Ok(Self {
            fmt: m.int_text(0x01, "fmt")?,
            auth_data: m.int_bytes(0x02, "authData")?,
            att_stmt,
        })
    }
}

// ---------------------------------------------------------------------------
// authenticatorGetAssertion (0x02) and authenticatorGetNextAssertion (0x08)
// ---------------------------------------------------------------------------

/// hmac-secret extension input of getAssertion (CTAP 2.1 section 12.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HmacSecretInput {
    pub key_agreement: CoseEc2Key,
    pub salt_enc: Vec<u8>,
    pub salt_auth: Vec<u8>,
    pub pin_uv_auth_protocol: Option<i64>,
}

impl HmacSecretInput {
    pub fn to_value(&self) -> Value {
        MapBuilder::new()
            .put(1, self.key_agreement.to_value())
            .put(2, Value::Bytes(self.salt_enc.clone()))
            .put(3, Value::Bytes(self.salt_auth.clone()))
            .put(4, opt_int(self.pin_uv_auth_protocol))
            .build()
    }
    pub fn from_value(v: &Value) -> Result<Self> {
        let m = MapView::new(v, "hmac-secret")?;
        Ok(Self {
            key_agreement: CoseEc2Key::from_value(
                m.get_int(1)
                    .ok_or_else(|| missing("hmac-secret.keyAgreement"))?,
            )?,
            salt_enc: m.int_bytes(2, "saltEnc")?,
            salt_auth: m.int_bytes(3, "saltAuth")?,
            pin_uv_auth_protocol: m.int_i64_opt(4, "pinUvAuthProtocol")?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GetAssertionExtensions {
    pub hmac_secret: Option<HmacSecretInput>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GetAssertionRequest {
    pub rp_id: String,
    pub client_data_hash: Vec<u8>,
    pub allow_list: Option<Vec<CredentialDescriptor>>,
    pub extensions: GetAssertionExtensions,
    pub options: RequestOptions,
    pub pin_uv_auth_param: Option<Vec<u8>>,
    pub pin_uv_auth_protocol: Option<i64>,
}

impl GetAssertionRequest {
    pub fn to_value(&self) -> Value {
        let ext = self.extensions.hmac_secret.as_ref().map(|h| {
            MapBuilder::new()
                .put_text(extension::HMAC_SECRET, h.to_value())
                .build()
        });
        MapBuilder::new()
            .put(0x01, text(&self.rp_id))
            .put(0x02, Value::Bytes(self.client_data_hash.clone()))
            .put(0x03, descriptor_list_value(&self.allow_list))
            .put(0x04, ext)
            .put(0x05, self.options.to_value())
            .put(0x06, opt_bytes(&self.pin_uv_auth_param))
            .put(0x07, opt_int(self.pin_uv_auth_protocol))
            .build()
    }

    pub fn from_value(v: &Value) -> Result<Self> {
        let m = MapView::new(v, "authenticatorGetAssertion")?;
        let mut extensions = GetAssertionExtensions::default();
        if let Some(e) = m.get_int(0x04) {
            let em = MapView::new(e, "extensions")?;
            if let Some(h) = em.get_text(extension::HMAC_SECRET) {
                extensions.hmac_secret = Some(HmacSecretInput::from_value(h)?);
            }
        }
        Ok(Self {
            rp_id: m.int_text(0x01, "rpId")?,
            client_data_hash: m.int_bytes(0x02, "clientDataHash")?,
            allow_list: descriptor_list(m.get_int(0x03), "allowList")?,
            extensions,
            options: RequestOptions::from_value(m.get_int(0x05))?,
            pin_uv_auth_param: m.int_bytes_opt(0x06, "pinUvAuthParam")?,
            pin_uv_auth_protocol: m.int_i64_opt(0x07, "pinUvAuthProtocol")?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GetAssertionResponse {
    pub credential: CredentialDescriptor,
    pub auth_data: Vec<u8>,
    pub signature: Vec<u8>,
    pub user: Option<UserEntity>,
    pub number_of_credentials: Option<u64>,
    pub user_selected: Option<bool>,
}

impl GetAssertionResponse {
    pub fn to_value(&self) -> Value {
        MapBuilder::new()
            .put(0x01, self.credential.to_value())
            .put(0x02, Value::Bytes(self.auth_data.clone()))
            .put(0x03, Value::Bytes(self.signature.clone()))
            .put(0x04, self.user.as_ref().map(UserEntity::to_value))
            .put(0x05, self.number_of_credentials.map(|n| int(n as i64)))
            .put(0x06, self.user_selected.map(Value::Bool))
            .build()
    }

    pub fn from_value(v: &Value) -> Result<Self> {
        let m = MapView::new(v, "authenticatorGetAssertion response")?;
        let credential = CredentialDescriptor::from_value(
            m.get_int(0x01).ok_or_else(|| missing("credential"))?,
        )?
        .ok_or_else(|| unexpected("credential.type"))?;
        Ok(Self {
            credential,
            auth_data: m.int_bytes(0x02, "authData")?,
            signature: m.int_bytes(0x03, "signature")?,
            user: m.get_int(0x04).map(UserEntity::from_value).transpose()?,
            number_of_credentials: m
                .int_i64_opt(0x05, "numberOfCredentials")?
                .map(|n| n.max(0) as u64),
            user_selected: m.int_bool_opt(0x06, "userSelected")?,
        })
    }
}

// ---------------------------------------------------------------------------
// authenticatorClientPIN (0x06)
// ---------------------------------------------------------------------------

/// clientPIN subcommands.
pub mod client_pin {
    pub const GET_PIN_RETRIES: u8 = 0x01;
    pub const GET_KEY_AGREEMENT: u8 = 0x02;
    pub const SET_PIN: u8 = 0x03;
    pub const CHANGE_PIN: u8 = 0x04;
    pub const GET_PIN_TOKEN: u8 = 0x05;
    pub const GET_PIN_UV_AUTH_TOKEN_USING_UV_WITH_PERMISSIONS: u8 = 0x06;
    pub const GET_UV_RETRIES: u8 = 0x07;
    pub const GET_PIN_UV_AUTH_TOKEN_USING_PIN_WITH_PERMISSIONS: u8 = 0x09;
}

/// pinUvAuthToken permissions (CTAP 2.1 section 6.5.5.7).
pub mod permission {
    pub const MAKE_CREDENTIAL: u8 = 0x01;
    pub const GET_ASSERTION: u8 = 0x02;
    pub const CREDENTIAL_MANAGEMENT: u8 = 0x04;
    pub const BIO_ENROLLMENT: u8 = 0x08;
    pub const LARGE_BLOB_WRITE: u8 = 0x10;
    pub const AUTHENTICATOR_CONFIG: u8 = 0x20;
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientPinRequest {
    pub pin_uv_auth_protocol: Option<i64>,
    pub sub_command: u8,
    pub key_agreement: Option<CoseEc2Key>,
    pub pin_uv_auth_param: Option<Vec<u8>>,
    pub new_pin_enc: Option<Vec<u8>>,
    pub pin_hash_enc: Option<Vec<u8>>,
    pub permissions: Option<u8>,
    pub rp_id: Option<String>,
}

impl ClientPinRequest {
    pub fn to_value(&self) -> Value {
        MapBuilder::new()
            .put(0x01, opt_int(self.pin_uv_auth_protocol))
            .put(0x02, int(self.sub_command as i64))
            .put(0x03, self.key_agreement.as_ref().map(CoseEc2Key::to_value))
            .put(0x04, opt_bytes(&self.pin_uv_auth_param))
            .put(0x05, opt_bytes(&self.new_pin_enc))
            .put(0x06, opt_bytes(&self.pin_hash_enc))
            .put(0x09, self.permissions.map(|p| int(p as i64)))
            .put(0x0A, opt_text(&self.rp_id))
            .build()
    }

    pub fn from_value(v: &Value) -> Result<Self> {
        let m = MapView::new(v, "authenticatorClientPIN")?;
        let sub = m.int_i64(0x02, "subCommand")?;
        let permissions = m
            .int_i64_opt(0x09, "permissions")?
            .map(|p| {
                u8::try_from(p).map_err(|_| {
                    CtapError::new(
                        StatusCode::ERR_INVALID_PARAMETER,
                        "permissions out of range",
                    )
                })
            })
            .transpose()?;
        Ok(Self {
            pin_uv_auth_protocol: m.int_i64_opt(0x01, "pinUvAuthProtocol")?,
            sub_command: u8::try_from(sub).map_err(|_| {
                CtapError::new(
                    StatusCode::ERR_INVALID_SUBCOMMAND,
                    "subCommand out of range",
                )
            })?,
            key_agreement: m.get_int(0x03).map(CoseEc2Key::from_value).transpose()?,
            pin_uv_auth_param: m.int_bytes_opt(0x04, "pinUvAuthParam")?,
            new_pin_enc: m.int_bytes_opt(0x05, "newPinEnc")?,
            pin_hash_enc: m.int_bytes_opt(0x06, "pinHashEnc")?,
            permissions,
            rp_id: m.int_text_opt(0x0A, "rpId")?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientPinResponse {
    pub key_agreement: Option<CoseEc2Key>,
    pub pin_uv_auth_token: Option<Vec<u8>>,
    pub pin_retries: Option<u8>,
    pub power_cycle_state: Option<bool>,
    pub uv_retries: Option<u8>,
}

impl ClientPinResponse {
    pub fn to_value(&self) -> Value {
        MapBuilder::new()
            .put(0x01, self.key_agreement.as_ref().map(CoseEc2Key::to_value))
            .put(0x02, opt_bytes(&self.pin_uv_auth_token))
            .put(0x03, self.pin_retries.map(|r| int(r as i64)))
            .put(0x04, self.power_cycle_state.map(Value::Bool))
            .put(0x05, self.uv_retries.map(|r| int(r as i64)))
            .build()
    }

    pub fn from_value(v: &Value) -> Result<Self> {
        let m = MapView::new(v, "authenticatorClientPIN response")?;
        let small = |key: i64, name: &str| -> Result<Option<u8>> {
            m.int_i64_opt(key, name)?
                .map(|r| {
                    u8::try_from(r).map_err(|_| {
                        CtapError::new(
                            StatusCode::ERR_INVALID_PARAMETER,
                            format!("{name} out of range"),
                        )
                    })
                })
                .transpose()
        };
        Ok(Self {
            key_agreement: m.get_int(0x01).map(CoseEc2Key::from_value).transpose()?,
            pin_uv_auth_token: m.int_bytes_opt(0x02, "pinUvAuthToken")?,
            pin_retries: small(0x03, "pinRetries")?,
            power_cycle_state: m.int_bool_opt(0x04, "powerCycleState")?,
            uv_retries: small(0x05, "uvRetries")?,
        })
    }
}

// ---------------------------------------------------------------------------
// authenticatorCredentialManagement (0x0A, preview 0x41)
// ---------------------------------------------------------------------------

/// credentialManagement subcommands.
pub mod cred_mgmt {
    pub const GET_CREDS_METADATA: u8 = 0x01;
    pub const ENUMERATE_RPS_BEGIN: u8 = 0x02;
    pub const ENUMERATE_RPS_GET_NEXT_RP: u8 = 0x03;
    pub const ENUMERATE_CREDENTIALS_BEGIN: u8 = 0x04;
    pub const ENUMERATE_CREDENTIALS_GET_NEXT_CREDENTIAL: u8 = 0x05;
    pub const DELETE_CREDENTIAL: u8 = 0x06;
    pub const UPDATE_USER_INFORMATION: u8 = 0x07;
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CredMgmtSubCommandParams {
    pub rp_id_hash: Option<Vec<u8>>,
    pub credential_id: Option<CredentialDescriptor>,
    pub user: Option<UserEntity>,
}

impl CredMgmtSubCommandParams {
    pub fn is_empty(&self) -> bool {
        self.rp_id_hash.is_none() && self.credential_id.is_none() && self.user.is_none()
    }
    pub fn to_value(&self) -> Value {
        MapBuilder::new()
            .put(0x01, opt_bytes(&self.rp_id_hash))
            .put(
                0x02,
                self.credential_id
                    .as_ref()
                    .map(CredentialDescriptor::to_value),
            )
            .put(0x03, self.user.as_ref().map(UserEntity::to_value))
            .build()
    }
    pub fn from_value(v: &Value) -> Result<Self> {
        let m = MapView::new(v, "subCommandParams")?;
        Ok(Self {
            rp_id_hash: m.int_bytes_opt(0x01, "rpIDHash")?,
            credential_id: match m.get_int(0x02) {
                None => None,
                Some(c) => Some(
                    CredentialDescriptor::from_value(c)?
                        .ok_or_else(|| unexpected("credentialID.type"))?,
                ),
            },
            user: m.get_int(0x03).map(UserEntity::from_value).transpose()?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CredentialManagementRequest {
    pub sub_command: u8,
    pub params: Option<CredMgmtSubCommandParams>,
    pub pin_uv_auth_protocol: Option<i64>,
    pub pin_uv_auth_param: Option<Vec<u8>>,
}

impl CredentialManagementRequest {
    /// The message the pinUvAuthParam authenticates: subCommand followed by
    /// the canonical CBOR of subCommandParams, if any.
    pub fn auth_message(&self) -> Vec<u8> {
        let mut msg = vec![self.sub_command];
        if let Some(p) = &self.params {
            msg.extend(encode_canonical(&p.to_value()));
        }
        msg
    }

    pub fn to_value(&self) -> Value {
        MapBuilder::new()
            .put(0x01, int(self.sub_command as i64))
            .put(
                0x02,
                self.params.as_ref().map(CredMgmtSubCommandParams::to_value),
            )
            .put(0x03, opt_int(self.pin_uv_auth_protocol))
            .put(0x04, opt_bytes(&self.pin_uv_auth_param))
            .build()
    }

    pub fn from_value(v: &Value) -> Result<Self> {
        let m = MapView::new(v, "authenticatorCredentialManagement")?;
        let sub = m.int_i64(0x01, "subCommand")?;
        Ok(Self {
            sub_command: u8::try_from(sub).map_err(|_| {
                CtapError::new(
                    StatusCode::ERR_INVALID_SUBCOMMAND,
                    "subCommand out of range",
                )
            })?,
            params: m
                .get_int(0x02)
                .map(CredMgmtSubCommandParams::from_value)
                .transpose()?,
            pin_uv_auth_protocol: m.int_i64_opt(0x03, "pinUvAuthProtocol")?,
            pin_uv_auth_param: m.int_bytes_opt(0x04, "pinUvAuthParam")?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CredentialManagementResponse {
    pub existing_resident_credentials_count: Option<u64>,
    pub max_possible_remaining_resident_credentials_count: Option<u64>,
    pub rp: Option<RpEntity>,
    pub rp_id_hash: Option<Vec<u8>>,
    pub total_rps: Option<u64>,
    pub user: Option<UserEntity>,
    pub credential_id: Option<CredentialDescriptor>,
    pub public_key: Option<CoseEc2Key>,
    pub total_credentials: Option<u64>,
    pub cred_protect: Option<u8>,
}

impl CredentialManagementResponse {
    pub fn to_value(&self) -> Value {
        let u = |v: Option<u64>| v.map(|n| int(n as i64));
        MapBuilder::new()
            .put(0x01, u(self.existing_resident_credentials_count))
            .put(
                0x02,
                u(self.max_possible_remaining_resident_credentials_count),
            )
            .put(0x03, self.rp.as_ref().map(RpEntity::to_value))
            .put(0x04, opt_bytes(&self.rp_id_hash))
            .put(0x05, u(self.total_rps))
            .put(0x06, self.user.as_ref().map(UserEntity::to_value))
            .put(
                0x07,
                self.credential_id
                    .as_ref()
                    .map(CredentialDescriptor::to_value),
            )
            .put(0x08, self.public_key.as_ref().map(CoseEc2Key::to_value))
            .put(0x09, u(self.total_credentials))
            .put(0x0A, self.cred_protect.map(|c| int(c as i64)))
            .build()
    }

    pub fn from_value(v: &Value) -> Result<Self> {
        let m = MapView::new(v, "authenticatorCredentialManagement response")?;
        let u = |key: i64, name: &str| -> Result<Option<u64>> {
            Ok(m.int_i64_opt(key, name)?.map(|n| n.max(0) as u64))
        };
        Ok(Self {
            existing_resident_credentials_count: u(0x01, "existingResidentCredentialsCount")?,
            max_possible_remaining_resident_credentials_count: u(
                0x02,
                "maxPossibleRemainingResidentCredentialsCount",
            )?,
            rp: m.get_int(0x03).map(RpEntity::from_value).transpose()?,
            rp_id_hash: m.int_bytes_opt(0x04, "rpIDHash")?,
            total_rps: u(0x05, "totalRPs")?,
            user: m.get_int(0x06).map(UserEntity::from_value).transpose()?,
            credential_id: match m.get_int(0x07) {
                None => None,
                Some(c) => Some(
                    CredentialDescriptor::from_value(c)?
                        .ok_or_else(|| unexpected("credentialID.type"))?,
                ),
            },
            public_key: m.get_int(0x08).map(CoseEc2Key::from_value).transpose()?,
            total_credentials: u(0x09, "totalCredentials")?,
            cred_protect: m
                .int_i64_opt(0x0A, "credProtect")?
                .map(|c| c.clamp(0, 255) as u8),
        })
    }
}

// ---------------------------------------------------------------------------
// Authenticator data
// ---------------------------------------------------------------------------

/// authenticatorData flags.
pub mod flags {
    pub const UP: u8 = 0x01;
    pub const UV: u8 = 0x04;
    pub const AT: u8 = 0x40;
    pub const ED: u8 = 0x80;
}

/// Parsed authenticator data (WebAuthn section 6.1).
#[derive(Debug, Clone, PartialEq)]
pub struct AuthenticatorData {
    pub rp_id_hash: [u8; 32],
    pub flags: u8,
    pub sign_count: u32,
    pub attested: Option<AttestedCredentialData>,
    pub extensions: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestedCredentialData {
    pub aaguid: [u8; 16],
    pub credential_id: Vec<u8>,
    pub public_key: CoseEc2Key,
}

impl AuthenticatorData {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(200);
        out.extend_from_slice(&self.rp_id_hash);
        out.push(self.flags);
        out.extend_from_slice(&self.sign_count.to_be_bytes());
        if let Some(a) = &self.attested {
            out.extend_from_slice(&a.aaguid);
            out.extend_from_slice(&(a.credential_id.len() as u16).to_be_bytes());
            out.extend_from_slice(&a.credential_id);
            out.extend(encode_canonical(&a.public_key.to_value()));
        }
        if let Some(e) = &self.extensions {
            out.extend(encode_canonical(e));
        }
        out
    }

    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let bad = |d: &str| {
            CtapError::new(
                StatusCode::ERR_INVALID_LENGTH,
                format!("authenticatorData: {d}"),
            )
        };
        if bytes.len() < 37 {
            return Err(bad("shorter than 37 bytes"));
        }
        let mut rp_id_hash = [0u8; 32];
        rp_id_hash.copy_from_slice(&bytes[..32]);
        let flags_byte = bytes[32];
        let sign_count = u32::from_be_bytes([bytes[33], bytes[34], bytes[35], bytes[36]]);
        let mut rest = &bytes[37..];
        let attested = if flags_byte & flags::AT != 0 {
            if rest.len() < 18 {
                return Err(bad("attested credential data truncated"));
            }
            let mut aaguid = [0u8; 16];
            aaguid.copy_from_slice(&rest[..16]);
            let len = u16::from_be_bytes([rest[16], rest[17]]) as usize;
            rest = &rest[18..];
            if rest.len() < len {
                return Err(bad("credential id truncated"));
            }
            let credential_id = rest[..len].to_vec();
            rest = &rest[len..];
            let mut reader = rest;
            let key: Value = ciborium::de::from_reader_with_recursion_limit(&mut reader, MAX_DEPTH)
                .map_err(|_| {
                    CtapError::new(StatusCode::ERR_INVALID_CBOR, "credential public key")
                })?;
            rest = reader;
            Some(AttestedCredentialData {
                aaguid,
                credential_id,
                public_key: CoseEc2Key::from_value(&key)?,
            })
        } else {
            None
        };
        let extensions = if flags_byte & flags::ED != 0 {
            Some(decode(rest)?)
        } else if rest.is_empty() {
            None
        } else {
            return Err(bad("trailing bytes"));
        };
        Ok(Self {
            rp_id_hash,
            flags: flags_byte,
            sign_count,
            attested,
            extensions,
        })
    }
}

// ---------------------------------------------------------------------------
// PIN/UV auth protocols 1 and 2 (CTAP 2.1 section 6.5.6 and 6.5.7)
// ---------------------------------------------------------------------------

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// A PIN/UV auth protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinProtocol {
    V1,
    V2,
}

/// The shared secret of a PIN protocol key agreement (32 bytes for protocol
/// 1, 64 bytes = HMAC key || AES key for protocol 2).
#[derive(Clone, PartialEq, Eq)]
pub struct SharedSecret(Vec<u8>);

impl std::fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedSecret(..)")
    }
}

impl SharedSecret {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl PinProtocol {
    pub fn from_number(n: i64) -> Result<Self> {
        match n {
            1 => Ok(Self::V1),
            2 => Ok(Self::V2),
            _ => Err(CtapError::new(
                StatusCode::ERR_INVALID_PARAMETER,
                "unsupported pinUvAuthProtocol",
            )),
        }
    }

    pub fn number(self) -> i64 {
        match self {
            Self::V1 => 1,
            Self::V2 => 2,
        }
    }

    /// KDF of the protocol applied to the ECDH x-coordinate Z.
    pub fn kdf(self, z: &[u8]) -> SharedSecret {
        match self {
            Self::V1 => SharedSecret(Sha256::digest(z).to_vec()),
            Self::V2 => {
                let hk = hkdf::Hkdf::<Sha256>::new(Some(&[0u8; 32]), z);
                let mut out = vec![0u8; 64];
                hk.expand(b"CTAP2 HMAC key", &mut out[..32])
                    .expect("HKDF length");
                hk.expand(b"CTAP2 AES key", &mut out[32..])
                    .expect("HKDF length");
                SharedSecret(out)
            }
        }
    }

    fn aes_key(self, shared: &SharedSecret) -> [u8; 32] {
        let mut key = [0u8; 32];
        match self {
            Self::V1 => key.copy_from_slice(&shared.0[..32]),
            Self::V2 => key.copy_from_slice(&shared.0[32..64]),
        }
        key
    }

    /// Encrypts `plaintext` (a multiple of 16 bytes) for the peer. Protocol 2
    /// prefixes a random IV; protocol 1 uses an all-zero IV.
    pub fn encrypt(
        self,
        shared: &SharedSecret,
        plaintext: &[u8],
        rng: &mut dyn rand_core::RngCore,
    ) -> Result<Vec<u8>> {
        use cbc::cipher::{block_padding::NoPadding, BlockEncryptMut, KeyIvInit};
        if plaintext.len() % 16 != 0 {
            return Err(CtapError::new(
                StatusCode::ERR_INVALID_LENGTH,
                "plaintext not a multiple of 16 bytes",
            ));
        }
        let key = self.aes_key(shared);
        let mut iv = [0u8; 16];
        if self == Self::V2 {
            rng.fill_bytes(&mut iv);
        }
        let mut ct = plaintext.to_vec();
        cbc::Encryptor::<aes::Aes256>::new(&key.into(), &iv.into())
            .encrypt_padded_mut::<NoPadding>(&mut ct, plaintext.len())
            .map_err(|_| CtapError::new(StatusCode::ERR_INVALID_LENGTH, "encryption failed"))?;
        Ok(match self {
            Self::V1 => ct,
            Self::V2 => [iv.as_slice(), &ct].concat(),
        })
    }

    /// Decrypts what [`encrypt`](Self::encrypt) produced. Lengths that are
    /// not whole blocks give `CTAP1_ERR_INVALID_PARAMETER`.
    pub fn decrypt(self, shared: &SharedSecret, ciphertext: &[u8]) -> Result<Vec<u8>> {
        use cbc::cipher::{block_padding::NoPadding, BlockDecryptMut, KeyIvInit};
        let (iv, ct) = match self {
            Self::V1 => ([0u8; 16], ciphertext),
            Self::V2 => {
                if ciphertext.len() < 16 {
                    return Err(CtapError::new(
                        StatusCode::ERR_INVALID_PARAMETER,
                        "ciphertext shorter than its IV",
                    ));
                }
                let mut iv = [0u8; 16];
                iv.copy_from_slice(&ciphertext[..16]);
                (iv, &ciphertext[16..])
            }
        };
        if ct.is_empty() || ct.len() % 16 != 0 {
            return Err(CtapError::new(
                StatusCode::ERR_INVALID_PARAMETER,
                "ciphertext not whole AES blocks",
            ));
        }
        let key = self.aes_key(shared);
        let mut pt = ct.to_vec();
        cbc::Decryptor::<aes::Aes256>::new(&key.into(), &iv.into())
            .decrypt_padded_mut::<NoPadding>(&mut pt)
            .map_err(|_| CtapError::new(StatusCode::ERR_INVALID_PARAMETER, "decryption failed"))?;
        Ok(pt)
    }

    /// The length of a pinUvAuthParam for this protocol.
    pub fn auth_param_len(self) -> usize {
        match self {
            Self::V1 => 16,
            Self::V2 => 32,
        }
    }

    fn mac(self, key: &[u8]) -> HmacSha256 {
        // Protocol 2 keys longer than 32 bytes are shared secrets: their first
        // half is the HMAC key. Protocol 1 uses the whole key.
        let key = match self {
            Self::V2 if key.len() > 32 => &key[..32],
            _ => key,
        };
        HmacSha256::new_from_slice(key).expect("HMAC accepts any key length")
    }

    /// authenticate(key, message): HMAC-SHA-256, truncated to 16 bytes for
    /// protocol 1. `key` is a pinUvAuthToken or a shared secret.
    pub fn authenticate(self, key: &[u8], message: &[u8]) -> Vec<u8> {
        let mut mac = self.mac(key);
        mac.update(message);
        let tag = mac.finalize().into_bytes();
        tag[..self.auth_param_len()].to_vec()
    }

    /// verify(key, message, signature) in constant time.
    pub fn verify(self, key: &[u8], message: &[u8], signature: &[u8]) -> bool {
        if signature.len() != self.auth_param_len() {
            return false;
        }
        let mut mac = self.mac(key);
        mac.update(message);
        mac.verify_truncated_left(signature).is_ok()
    }

    /// Authenticates with a shared secret (for protocol 1 the whole secret,
    /// for protocol 2 its HMAC-key half).
    pub fn authenticate_shared(self, shared: &SharedSecret, message: &[u8]) -> Vec<u8> {
        self.authenticate(&shared.0, message)
    }

    pub fn verify_shared(self, shared: &SharedSecret, message: &[u8], signature: &[u8]) -> bool {
        self.verify(&shared.0, message, signature)
    }
}

/// A P-256 key agreement key pair of either side of a PIN protocol.
#[derive(Clone)]
pub struct KeyAgreementKey {
    secret: p256::SecretKey,
}

impl std::fmt::Debug for KeyAgreementKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyAgreementKey(..)")
    }
}

impl KeyAgreementKey {
    pub fn generate(rng: &mut (impl rand_core::CryptoRng + rand_core::RngCore)) -> Self {
        Self {
            secret: p256::SecretKey::random(rng),
        }
    }

    /// The COSE form sent to the peer (alg -25, ECDH-ES+HKDF-256).
    pub fn public_cose(&self) -> CoseEc2Key {
        CoseEc2Key::from_public_key(&self.secret.public_key(), cose::ECDH_ES_HKDF_256)
    }

    /// ECDH with the peer's key, then the protocol's KDF.
    pub fn shared_secret(&self, protocol: PinProtocol, peer: &CoseEc2Key) -> Result<SharedSecret> {
        let peer = peer.to_public_key()?;
        let z = p256::ecdh::diffie_hellman(self.secret.to_nonzero_scalar(), peer.as_affine());
        Ok(protocol.kdf(z.raw_secret_bytes()))
    }
}

/// LEFT(SHA-256(pin), 16): what clientPIN carries and the authenticator stores.
pub fn pin_hash16(pin: &[u8]) -> [u8; 16] {
    let digest = Sha256::digest(pin);
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

/// Pads a PIN to the 64-byte block clientPIN encrypts (CTAP 2.1 section
/// 6.5.5.5). PINs longer than 63 bytes give `CTAP2_ERR_PIN_POLICY_VIOLATION`.
pub fn pad_pin(pin: &[u8]) -> Result<Vec<u8>> {
    if pin.len() > 63 {
        return Err(CtapError::new(
            StatusCode::ERR_PIN_POLICY_VIOLATION,
            "PIN longer than 63 bytes",
        ));
    }
    let mut out = pin.to_vec();
    out.resize(64, 0);
    Ok(out)
}

/// The platform side of a clientPIN exchange: given the authenticator's
/// key agreement key, produce the platform key and shared secret.
pub fn platform_key_agreement(
    protocol: PinProtocol,
    authenticator_key: &CoseEc2Key,
    rng: &mut (impl rand_core::CryptoRng + rand_core::RngCore),
) -> Result<(CoseEc2Key, SharedSecret)> {
    let mine = KeyAgreementKey::generate(rng);
    let shared = mine.shared_secret(protocol, authenticator_key)?;
    Ok((mine.public_cose(), shared))
}

/// The platform (client) side of clientPIN and pinUvAuthParam, as Keyward's
/// issuance engine drives a real or virtual authenticator: build the
/// requests, keep the shared secret, decrypt the token, sign requests.
pub mod platform {
    use super::*;

    /// The getKeyAgreement request that starts every PIN exchange.
    pub fn get_key_agreement_request(protocol: PinProtocol) -> ClientPinRequest {
        ClientPinRequest {
            pin_uv_auth_protocol: Some(protocol.number()),
            sub_command: client_pin::GET_KEY_AGREEMENT,
            ..Default::default()
        }
    }

    /// The getPINRetries request.
    pub fn get_pin_retries_request(protocol: PinProtocol) -> ClientPinRequest {
        ClientPinRequest {
            pin_uv_auth_protocol: Some(protocol.number()),
            sub_command: client_pin::GET_PIN_RETRIES,
            ..Default::default()
        }
    }

    /// One PIN exchange: the platform's key agreement key and the shared
    /// secret with the authenticator. Use a new session per operation, as
    /// the authenticator may change its key after each PIN check.
    pub struct PinSession {
        pub protocol: PinProtocol,
        platform_key: CoseEc2Key,
        shared: SharedSecret,
    }

    impl std::fmt::Debug for PinSession {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("PinSession")
                .field("protocol", &self.protocol)
                .finish_non_exhaustive()
        }
    }

    impl PinSession {
        /// From the authenticator's key (the getKeyAgreement response).
        pub fn new(
            protocol: PinProtocol,
            authenticator_key: &CoseEc2Key,
            rng: &mut (impl rand_core::CryptoRng + rand_core::RngCore),
        ) -> Result<Self> {
            let (platform_key, shared) = platform_key_agreement(protocol, authenticator_key, rng)?;
            Ok(Self {
                protocol,
                platform_key,
                shared,
            })
        }

        fn base(&self, sub_command: u8) -> ClientPinRequest {
            ClientPinRequest {
                pin_uv_auth_protocol: Some(self.protocol.number()),
                sub_command,
                key_agreement: Some(self.platform_key.clone()),
                ..Default::default()
            }
        }

        /// setPIN. CTAP limits: at least 4 code points, at most 63 bytes
        /// (the authenticator's minPINLength may ask for more).
        pub fn set_pin_request(
            &self,
            new_pin: &str,
            rng: &mut dyn rand_core::RngCore,
        ) -> Result<ClientPinRequest> {
            check_pin(new_pin)?;
            let new_pin_enc =
                self.protocol
                    .encrypt(&self.shared, &pad_pin(new_pin.as_bytes())?, rng)?;
            let mut req = self.base(client_pin::SET_PIN);
            req.pin_uv_auth_param = Some(
                self.protocol
                    .authenticate_shared(&self.shared, &new_pin_enc),
            );
            req.new_pin_enc = Some(new_pin_enc);
            Ok(req)
        }

        /// changePIN.
        pub fn change_pin_request(
            &self,
            current_pin: &str,
            new_pin: &str,
            rng: &mut dyn rand_core::RngCore,
        ) -> Result<ClientPinRequest> {
            check_pin(new_pin)?;
            let new_pin_enc =
                self.protocol
                    .encrypt(&self.shared, &pad_pin(new_pin.as_bytes())?, rng)?;
            let pin_hash_enc =
                self.protocol
                    .encrypt(&self.shared, &pin_hash16(current_pin.as_bytes()), rng)?;
            let mut req = self.base(client_pin::CHANGE_PIN);
            req.pin_uv_auth_param = Some(self.protocol.authenticate_shared(
                &self.shared,
                &[new_pin_enc.as_slice(), &pin_hash_enc].concat(),
            ));
            req.new_pin_enc = Some(new_pin_enc);
            req.pin_hash_enc = Some(pin_hash_enc);
            Ok(req)
        }

        /// getPinToken (0x05), for FIDO_2_0 / FIDO_2_1_PRE authenticators.
        pub fn get_pin_token_request(
            &self,
            pin: &str,
            rng: &mut dyn rand_core::RngCore,
        ) -> Result<ClientPinRequest> {
            let mut req = self.base(client_pin::GET_PIN_TOKEN);
            req.pin_hash_enc = Some(self.protocol.encrypt(
                &self.shared,
                &pin_hash16(pin.as_bytes()),
                rng,
            )?);
            Ok(req)
        }

        /// getPinUvAuthTokenUsingPinWithPermissions (0x09), for
        /// authenticators whose getInfo has the pinUvAuthToken option.
        pub fn get_token_with_permissions_request(
            &self,
            pin: &str,
            permissions: u8,
            rp_id: Option<&str>,
            rng: &mut dyn rand_core::RngCore,
        ) -> Result<ClientPinRequest> {
            let mut req = self.base(client_pin::GET_PIN_UV_AUTH_TOKEN_USING_PIN_WITH_PERMISSIONS);
            req.pin_hash_enc = Some(self.protocol.encrypt(
                &self.shared,
                &pin_hash16(pin.as_bytes()),
                rng,
            )?);
            req.permissions = Some(permissions);
            req.rp_id = rp_id.map(str::to_string);
            Ok(req)
        }

        /// Decrypts the pinUvAuthToken of a token response.
        pub fn decrypt_token(&self, response: &ClientPinResponse) -> Result<PinUvAuthToken> {
            let enc = response
                .pin_uv_auth_token
                .as_ref()
                .ok_or_else(|| missing("pinUvAuthToken"))?;
            let token = self.protocol.decrypt(&self.shared, enc)?;
            if token.len() != 16 && token.len() != 32 {
                return Err(CtapError::new(
                    StatusCode::ERR_INVALID_LENGTH,
                    "pinUvAuthToken is not 16 or 32 bytes",
                ));
            }
            Ok(PinUvAuthToken {
                protocol: self.protocol,
                token,
            })
        }
    }

    fn check_pin(pin: &str) -> Result<()> {
        if pin.chars().count() < 4 || pin.len() > 63 {
            return Err(CtapError::new(
                StatusCode::ERR_PIN_POLICY_VIOLATION,
                "a FIDO PIN has at least 4 characters and at most 63 bytes",
            ));
        }
        Ok(())
    }

    /// A decrypted pinUvAuthToken.
    pub struct PinUvAuthToken {
        pub protocol: PinProtocol,
        token: Vec<u8>,
    }

    impl std::fmt::Debug for PinUvAuthToken {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("PinUvAuthToken")
                .field("protocol", &self.protocol)
                .finish_non_exhaustive()
        }
    }

    impl PinUvAuthToken {
        pub fn authenticate(&self, message: &[u8]) -> Vec<u8> {
            self.protocol.authenticate(&self.token, message)
        }

        /// Adds pinUvAuthParam and pinUvAuthProtocol to a makeCredential.
        pub fn sign_make_credential(&self, req: &mut MakeCredentialRequest) {
            req.pin_uv_auth_param = Some(self.authenticate(&req.client_data_hash));
            req.pin_uv_auth_protocol = Some(self.protocol.number());
        }

        /// Adds pinUvAuthParam and pinUvAuthProtocol to a getAssertion.
        pub fn sign_get_assertion(&self, req: &mut GetAssertionRequest) {
            req.pin_uv_auth_param = Some(self.authenticate(&req.client_data_hash));
            req.pin_uv_auth_protocol = Some(self.protocol.number());
        }

        /// Adds pinUvAuthParam and pinUvAuthProtocol to a credential
        /// management request (not needed for the "next" subcommands).
        pub fn sign_credential_management(&self, req: &mut CredentialManagementRequest) {
            req.pin_uv_auth_protocol = Some(self.protocol.number());
            req.pin_uv_auth_param = Some(self.authenticate(&req.auth_message()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    #[test]
    fn canonical_order_is_major_type_then_length_then_bytes() {
        let v = Value::Map(vec![
            (text("up"), int(1)),
            (int(-3), int(0)),
            (text("a"), int(0)),
            (int(24), int(0)),
            (int(-1), int(0)),
            (int(3), int(0)),
            (int(1), int(0)),
            (text("rk"), int(0)),
            (int(-2), int(0)),
        ]);
        let Value::Map(sorted) = canonicalize(v) else {
            panic!()
        };
        let keys: Vec<Value> = sorted.into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            vec![
                int(1),
                int(3),
                int(24),
                int(-1),
                int(-2),
                int(-3),
                text("a"),
                text("rk"),
                text("up")
            ]
        );
    }

    #[test]
    fn cose_key_encodes_canonically() {
        let key = KeyAgreementKey::generate(&mut OsRng).public_cose();
        let bytes = encode_canonical(&key.to_value());
        // {1: 2, 3: -25, -1: 1, -2: x, -3: y}
        assert_eq!(&bytes[..7], &[0xA5, 0x01, 0x02, 0x03, 0x38, 0x18, 0x20]);
        let back = CoseEc2Key::from_value(&decode(&bytes).unwrap()).unwrap();
        assert_eq!(back, key);
        assert!(is_canonical(&decode(&bytes).unwrap()));
    }

    #[test]
    fn decode_rejects_malformed_input_with_ctap_errors() {
        for bad in [
            &[0xA1u8][..],
            &[0xA1, 0x01],
            &[0x5F],
            &[0xFF],
            &[0x1C],
            &[0xA0, 0x00],
            &[0x7B, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF],
        ] {
            let err = decode(bad).unwrap_err();
            assert_eq!(err.status, StatusCode::ERR_INVALID_CBOR, "{bad:02X?}");
        }
        // Duplicate keys.
        assert_eq!(
            decode(&[0xA2, 0x01, 0x01, 0x01, 0x02]).unwrap_err().status,
            StatusCode::ERR_INVALID_CBOR
        );
        // Deep nesting.
        let deep = vec![0x81u8; 10_000];
        assert_eq!(
            decode(&deep).unwrap_err().status,
            StatusCode::ERR_INVALID_CBOR
        );
    }

    #[test]
    fn typed_decoders_report_missing_and_mistyped_fields() {
        let v = Value::Map(vec![(int(1), int(5))]);
        assert_eq!(
            MakeCredentialRequest::from_value(&v).unwrap_err().status,
            StatusCode::ERR_CBOR_UNEXPECTED_TYPE
        );
        let v = Value::Map(vec![(int(1), Value::Bytes(vec![0; 32]))]);
        assert_eq!(
            MakeCredentialRequest::from_value(&v).unwrap_err().status,
            StatusCode::ERR_MISSING_PARAMETER
        );
        assert_eq!(
            ClientPinRequest::from_value(&int(3)).unwrap_err().status,
            StatusCode::ERR_CBOR_UNEXPECTED_TYPE
        );
    }

    fn sample_make_credential() -> MakeCredentialRequest {
        MakeCredentialRequest {
            client_data_hash: vec![7; 32],
            rp: RpEntity {
                id: "example.com".into(),
                name: Some("Example".into()),
            },
            user: UserEntity {
                id: vec![1, 2, 3],
                name: Some("alice".into()),
                display_name: Some("Alice".into()),
            },
            algorithms: vec![cose::ES256],
            exclude_list: Some(vec![CredentialDescriptor { id: vec![9; 16] }]),
            extensions: MakeCredentialExtensions {
                cred_protect: Some(2),
                hmac_secret: Some(true),
            },
            options: RequestOptions {
                rk: Some(true),
                up: None,
                uv: None,
            },
            pin_uv_auth_param: Some(vec![1; 32]),
            pin_uv_auth_protocol: Some(2),
            enterprise_attestation: None,
        }
    }

    #[test]
    fn requests_and_responses_round_trip() {
        let mc = sample_make_credential();
        let bytes = encode_request(command::MAKE_CREDENTIAL, Some(&mc.to_value()));
        let (cmd, params) = split_request(&bytes).unwrap();
        assert_eq!(cmd, command::MAKE_CREDENTIAL);
        assert_eq!(
            MakeCredentialRequest::from_value(&params.unwrap()).unwrap(),
            mc
        );

        let ga = GetAssertionRequest {
            rp_id: "example.com".into(),
            client_data_hash: vec![1; 32],
            allow_list: Some(vec![CredentialDescriptor { id: vec![3; 20] }]),
            extensions: GetAssertionExtensions {
                hmac_secret: Some(HmacSecretInput {
                    key_agreement: KeyAgreementKey::generate(&mut OsRng).public_cose(),
                    salt_enc: vec![1; 48],
                    salt_auth: vec![2; 32],
                    pin_uv_auth_protocol: Some(2),
                }),
            },
            options: RequestOptions {
                rk: None,
                up: Some(true),
                uv: None,
            },
            pin_uv_auth_param: None,
            pin_uv_auth_protocol: None,
        };
        let v = decode(&encode_canonical(&ga.to_value())).unwrap();
        assert_eq!(GetAssertionRequest::from_value(&v).unwrap(), ga);

        let info = GetInfoResponse {
            versions: vec!["FIDO_2_0".into(), "FIDO_2_1".into()],
            extensions: vec!["credProtect".into(), "hmac-secret".into()],
            aaguid: [5; 16],
            options: vec![
                ("rk".into(), true),
                ("up".into(), true),
                ("clientPin".into(), false),
            ],
            max_msg_size: Some(1200),
            pin_uv_auth_protocols: vec![2, 1],
            algorithms: vec![cose::ES256],
            min_pin_length: Some(4),
            firmware_version: Some(0x050403),
            ..Default::default()
        };
        let bytes = encode_canonical(&info.to_value());
        let v = decode(&bytes).unwrap();
        assert!(is_canonical(&v));
        let back = GetInfoResponse::from_value(&v).unwrap();
        assert_eq!(back.option("clientPin"), Some(false));
        assert_eq!(back.versions, info.versions);
        assert_eq!(back.pin_uv_auth_protocols, vec![2, 1]);

        let cp = ClientPinRequest {
            pin_uv_auth_protocol: Some(1),
            sub_command: client_pin::GET_PIN_UV_AUTH_TOKEN_USING_PIN_WITH_PERMISSIONS,
            key_agreement: Some(KeyAgreementKey::generate(&mut OsRng).public_cose()),
            pin_hash_enc: Some(vec![0; 16]),
            permissions: Some(permission::MAKE_CREDENTIAL | permission::CREDENTIAL_MANAGEMENT),
            rp_id: Some("example.com".into()),
            ..Default::default()
        };
        assert_eq!(
            ClientPinRequest::from_value(&decode(&encode_canonical(&cp.to_value())).unwrap())
                .unwrap(),
            cp
        );

        let cm = CredentialManagementRequest {
            sub_command: cred_mgmt::ENUMERATE_CREDENTIALS_BEGIN,
            params: Some(CredMgmtSubCommandParams {
                rp_id_hash: Some(vec![4; 32]),
                ..Default::default()
            }),
            pin_uv_auth_protocol: Some(2),
            pin_uv_auth_param: Some(vec![0; 32]),
        };
        assert_eq!(
            CredentialManagementRequest::from_value(
                &decode(&encode_canonical(&cm.to_value())).unwrap()
            )
            .unwrap(),
            cm
        );
        assert_eq!(cm.auth_message()[0], cred_mgmt::ENUMERATE_CREDENTIALS_BEGIN);
    }

    #[test]
    fn authenticator_data_round_trips() {
        let ad = AuthenticatorData {
            rp_id_hash: [1; 32],
            flags: flags::UP | flags::UV | flags::AT | flags::ED,
            sign_count: 7,
            attested: Some(AttestedCredentialData {
                aaguid: [2; 16],
                credential_id: vec![3; 40],
                public_key: KeyAgreementKey::generate(&mut OsRng).public_cose(),
            }),
            extensions: Some(Value::Map(vec![(text("hmac-secret"), Value::Bool(true))])),
        };
        assert_eq!(AuthenticatorData::parse(&ad.to_bytes()).unwrap(), ad);
        assert!(AuthenticatorData::parse(&[0; 10]).is_err());
    }

    #[test]
    fn pin_protocols_agree_between_platform_and_authenticator() {
        for protocol in [PinProtocol::V1, PinProtocol::V2] {
            let authenticator = KeyAgreementKey::generate(&mut OsRng);
            let (platform_cose, platform_shared) =
                platform_key_agreement(protocol, &authenticator.public_cose(), &mut OsRng).unwrap();
            let auth_shared = authenticator
                .shared_secret(protocol, &platform_cose)
                .unwrap();
            assert_eq!(platform_shared, auth_shared);

            let padded = pad_pin(b"123456").unwrap();
            let enc = protocol
                .encrypt(&platform_shared, &padded, &mut OsRng)
                .unwrap();
            assert_eq!(protocol.decrypt(&auth_shared, &enc).unwrap(), padded);
            let tag = protocol.authenticate_shared(&platform_shared, &enc);
            assert_eq!(tag.len(), protocol.auth_param_len());
            assert!(protocol.verify_shared(&auth_shared, &enc, &tag));
            let mut wrong = tag.clone();
            wrong[0] ^= 1;
            assert!(!protocol.verify_shared(&auth_shared, &enc, &wrong));
            assert!(protocol
                .decrypt(&auth_shared, &enc[..enc.len() - 1])
                .is_err());
            assert!(protocol.decrypt(&auth_shared, &[]).is_err());
        }
        assert!(pad_pin(&[b'1'; 64]).is_err());
    }

    #[test]
    fn platform_helpers_build_requests_an_authenticator_accepts() {
        use platform::PinSession;
        for protocol in [PinProtocol::V1, PinProtocol::V2] {
            let authenticator = KeyAgreementKey::generate(&mut OsRng);
            let session =
                PinSession::new(protocol, &authenticator.public_cose(), &mut OsRng).unwrap();
            let req = session.set_pin_request("1234", &mut OsRng).unwrap();
            let shared = authenticator
                .shared_secret(protocol, req.key_agreement.as_ref().unwrap())
                .unwrap();
            let enc = req.new_pin_enc.as_ref().unwrap();
            assert!(protocol.verify_shared(&shared, enc, req.pin_uv_auth_param.as_ref().unwrap()));
            assert_eq!(&protocol.decrypt(&shared, enc).unwrap()[..5], b"1234\0");

            let req = session
                .change_pin_request("1234", "98765", &mut OsRng)
                .unwrap();
            let msg = [
                req.new_pin_enc.clone().unwrap(),
                req.pin_hash_enc.clone().unwrap(),
            ]
            .concat();
            assert!(protocol.verify_shared(&shared, &msg, req.pin_uv_auth_param.as_ref().unwrap()));
            assert_eq!(
                protocol
                    .decrypt(&shared, req.pin_hash_enc.as_ref().unwrap())
                    .unwrap(),
                pin_hash16(b"1234")
            );

            let req = session
                .get_token_with_permissions_request(
                    "1234",
                    permission::MAKE_CREDENTIAL,
                    Some("e.com"),
                    &mut OsRng,
                )
                .unwrap();
            assert_eq!(req.permissions, Some(permission::MAKE_CREDENTIAL));
            let token = vec![0x5A; 32];
            let resp = ClientPinResponse {
                pin_uv_auth_token: Some(protocol.encrypt(&shared, &token, &mut OsRng).unwrap()),
                ..Default::default()
            };
            let t = session.decrypt_token(&resp).unwrap();
            let mut mc = sample_make_credential();
            t.sign_make_credential(&mut mc);
            assert!(protocol.verify(
                &token,
                &mc.client_data_hash,
                mc.pin_uv_auth_param.as_ref().unwrap()
            ));
            assert!(session.set_pin_request("123", &mut OsRng).is_err());
            assert!(session
                .decrypt_token(&ClientPinResponse::default())
                .is_err());
        }
    }

    #[test]
    fn protocol_one_uses_zero_iv_and_sha256_kdf() {
        let shared = PinProtocol::V1.kdf(&[0x11; 32]);
        assert_eq!(shared.as_bytes(), Sha256::digest([0x11; 32]).as_slice());
        let a = PinProtocol::V1
            .encrypt(&shared, &[0; 16], &mut OsRng)
            .unwrap();
        let b = PinProtocol::V1
            .encrypt(&shared, &[0; 16], &mut OsRng)
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(PinProtocol::V2.kdf(&[0x11; 32]).as_bytes().len(), 64);
    }
}
