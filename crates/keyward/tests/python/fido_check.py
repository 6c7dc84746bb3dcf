#!/usr/bin/python3
"""Third-party check of Keyward's virtual FIDO authenticator with python-fido2.

Run by crates/keyward/tests/vcard_fido.rs against a `keyward vcard` process:
over PC/SC (fido2.pcsc.CtapPcscDevice) or over the virtual HID socket
(SocketHidConnection below, python-fido2's CtapHidConnection over a Unix
socket carrying 64-byte reports). Works with Debian's python3-fido2 0.9.1.

Checks: getInfo (versions as expected), setPIN, makeCredential with the PIN
(packed attestation verified by python-fido2, chained to the virtual CA
root), getAssertion verified with the credential's public key, wrong-PIN
retries counting down, reset refused outside the 10 s power-up window.
Exits non-zero with a message on the first failure.
"""

import argparse
import hashlib
import os
import socket
import sys
import time

START = time.monotonic()

from fido2.ctap import CtapError
from fido2.ctap2 import Ctap2
from fido2.ctap2.base import AttestationObject
from fido2.ctap2.pin import ClientPin
from fido2.attestation import PackedAttestation
from fido2.cose import CoseKey
from fido2.hid import CtapHidDevice
from fido2.hid.base import CtapHidConnection, HidDescriptor


class SocketHidConnection(CtapHidConnection):
    """A CtapHidConnection over Keyward's virtual HID socket: SOCK_STREAM,
    64-byte reports without report ID in both directions."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.sock.settimeout(60)

    def close(self):
        self.sock.close()

    def write_packet(self, data):
        if len(data) != 64:
            raise OSError("CTAPHID reports are 64 bytes, got %d" % len(data))
        self.sock.sendall(data)

    def read_packet(self):
        buf = b""
        while len(buf) < 64:
            chunk = self.sock.recv(64 - len(buf))
            if not chunk:
                raise OSError("virtual HID device closed")
            buf += chunk
        return buf


def fail(msg):
    print("FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)
    print("ok: " + msg)


def expect_ctap_error(code, fn, what):
    try:
        fn()
    except CtapError as e:
        check(e.code == code, "%s -> %s (got %s)" % (what, code.name, e.code))
        return
    fail("%s succeeded, expected %s" % (what, code.name))


def open_device(args):
    if args.hid_socket:
        desc = HidDescriptor(args.hid_socket, 0x1050, 0x0407, 64, 64)
        return CtapHidDevice(desc, SocketHidConnection(args.hid_socket))
    from fido2.pcsc import CtapPcscDevice
    from smartcard.System import readers
    from smartcard.scard import SCARD_SHARE_EXCLUSIVE

    # Exclusive access: another PC/SC client selecting an applet on the
    # shared card in between (a discovery scan, say) would otherwise change
    # the applet python-fido2 talks to.
    deadline = time.monotonic() + 20
    last = None
    while time.monotonic() < deadline:
        for reader in readers():
            if args.reader not in str(reader):
                continue
            conn = reader.createConnection()
            connect = conn.connect
            conn.connect = lambda *a, **k: connect(mode=SCARD_SHARE_EXCLUSIVE)
            try:
                return CtapPcscDevice(conn, str(reader))
            except Exception as e:  # card not there yet, or busy
                last = e
        time.sleep(0.5)
    fail("no FIDO device on a PC/SC reader matching %r (%r)" % (args.reader, last))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--hid-socket")
    p.add_argument("--reader", default="Virtual")
    p.add_argument("--version", required=True, help="version getInfo must list, e.g. FIDO_2_1")
    p.add_argument("--absent-version", action="append", default=[])
    p.add_argument("--pin", default="147258")
    p.add_argument("--ca-pem", help="virtual manufacturer CA root the x5c must chain to")
    args = p.parse_args()

    dev = open_device(args)
    ctap = Ctap2(dev)  # strict_cbor: python-fido2 rejects non-canonical CBOR
    info = ctap.get_info()
    print("getInfo:", info.versions, dict(info.options), "aaguid", info.aaguid.hex())
    check(args.version in info.versions, "getInfo lists " + args.version)
    for v in args.absent_version:
        check(v not in info.versions, "getInfo does not list " + v)
    check("clientPin" in info.options and not info.options["clientPin"], "no PIN set yet")
    check(-7 in [a["alg"] for a in (info.algorithms or [{"alg": -7}])], "ES256 offered")

    client_pin = ClientPin(ctap)
    client_pin.set_pin(args.pin)
    check(ctap.get_info().options["clientPin"], "setPIN: clientPin now true")
    check(client_pin.get_pin_retries()[0] == 8, "8 PIN retries after setPIN")

    rp = {"id": "keyward.example", "name": "Keyward test RP"}
    user = {"id": os.urandom(16), "name": "alice@keyward.example", "displayName": "Alice"}
    cdh = hashlib.sha256(b"client data for makeCredential").digest()
    proto = client_pin.protocol
    token = client_pin.get_pin_token(
        args.pin, ClientPin.PERMISSION.MAKE_CREDENTIAL | ClientPin.PERMISSION.GET_ASSERTION, rp["id"]
    )
    att = ctap.make_credential(
        cdh,
        rp,
        user,
        [{"type": "public-key", "alg": -7}],
        options={"rk": True},
        pin_uv_param=proto.authenticate(token, cdh),
        pin_uv_protocol=proto.VERSION,
    )
    check(att.fmt == "packed", "makeCredential: packed attestation")
    check(att.auth_data.is_user_verified() and att.auth_data.is_user_present(), "makeCredential: UP and UV")
    check(att.auth_data.credential_data.aaguid == info.aaguid, "AAGUID in authData matches getInfo")
    PackedAttestation().verify(att.att_statement, att.auth_data, cdh)
    print("ok: packed attestation statement verified by python-fido2")
    if args.ca_pem:
        from cryptography import x509
        from cryptography.hazmat.primitives.asymmetric import ec

        root = x509.load_pem_x509_certificate(open(args.ca_pem, "rb").read())
        chain = [x509.load_der_x509_certificate(c) for c in att.att_statement["x5c"]] + [root]
        for child, parent in zip(chain, chain[1:]):
            parent.public_key().verify(
                child.signature, child.tbs_certificate_bytes, ec.ECDSA(child.signature_hash_algorithm)
            )
        print("ok: x5c chains to the virtual manufacturer CA")
    public_key = att.auth_data.credential_data.public_key
    cred_id = att.auth_data.credential_data.credential_id

    cdh2 = hashlib.sha256(b"client data for getAssertion").digest()
    token = client_pin.get_pin_token(args.pin, ClientPin.PERMISSION.GET_ASSERTION, rp["id"])
    assertion = ctap.get_assertion(
        rp["id"],
        cdh2,
        allow_list=[{"type": "public-key", "id": cred_id}],
        pin_uv_param=proto.authenticate(token, cdh2),
        pin_uv_protocol=proto.VERSION,
    )
    assertion.verify(cdh2, public_key)
    print("ok: getAssertion signature verified with the credential public key")
    check(assertion.auth_data.counter > att.auth_data.counter, "signature counter increases")
    # A discoverable credential is found without an allow list too.
    token = client_pin.get_pin_token(args.pin, ClientPin.PERMISSION.GET_ASSERTION, rp["id"])
    a2 = ctap.get_assertion(rp["id"], cdh2, pin_uv_param=proto.authenticate(token, cdh2), pin_uv_protocol=proto.VERSION)
    a2.verify(cdh2, public_key)
    check(a2.user["id"] == user["id"], "discoverable credential returns its user id")

    # The WebAuthn client of python-fido2 with the extensions Keyward's
    # issuance uses: hmac-secret and credProtect (user verification required).
    from fido2.client import Fido2Client
    from fido2.ctap2.extensions import CredProtectExtension

    client = Fido2Client(dev, "https://" + rp["id"])
    made = client.make_credential(
        {
            "rp": rp,
            "user": {"id": os.urandom(16), "name": "bob@keyward.example", "displayName": "Bob"},
            "challenge": os.urandom(32),
            "pubKeyCredParams": [{"type": "public-key", "alg": -7}],
            "authenticatorSelection": {"requireResidentKey": True, "userVerification": "required"},
            "extensions": {
                "hmacCreateSecret": True,
                "credentialProtectionPolicy": CredProtectExtension.POLICY.REQUIRED,
                "enforceCredentialProtectionPolicy": True,
            },
        },
        pin=args.pin,
    )
    check(made.extension_results.get("hmacCreateSecret") is True, "Fido2Client: hmac-secret created")
    ad = made.attestation_object.auth_data
    check(ad.extensions.get("credProtect") == 3, "Fido2Client: credProtect 3 in authData")
    bob = {"type": "public-key", "id": ad.credential_data.credential_id}
    salt = os.urandom(32)
    outputs = []
    for _ in range(2):
        sel = client.get_assertion(
            {
                "rpId": rp["id"],
                "challenge": os.urandom(32),
                "allowCredentials": [bob],
                "userVerification": "required",
                "extensions": {"hmacGetSecret": {"salt1": salt}},
            },
            pin=args.pin,
        )
        resp = sel.get_response(0)
        outputs.append(resp.extension_results["hmacGetSecret"]["output1"])
    check(len(outputs[0]) == 32 and outputs[0] == outputs[1], "Fido2Client: hmac-secret output stable")
    try:
        ctap.get_assertion(rp["id"], cdh2, allow_list=[bob], options={"up": True})
        fail("credProtect 3 credential usable without user verification")
    except CtapError as e:
        check(e.code == CtapError.ERR.NO_CREDENTIALS, "credProtect 3: invisible without UV")

    wrong = "000000" if args.pin != "000000" else "999999"
    expect_ctap_error(CtapError.ERR.PIN_INVALID, lambda: client_pin.get_pin_token(wrong, ClientPin.PERMISSION.GET_ASSERTION, rp["id"]), "wrong PIN")
    check(client_pin.get_pin_retries()[0] == 7, "retries 7 after one wrong PIN")
    expect_ctap_error(CtapError.ERR.PIN_INVALID, lambda: client_pin.get_pin_token(wrong, ClientPin.PERMISSION.GET_ASSERTION, rp["id"]), "wrong PIN again")
    check(client_pin.get_pin_retries()[0] == 6, "retries 6 after two wrong PINs")
    client_pin.get_pin_token(args.pin, ClientPin.PERMISSION.GET_ASSERTION, rp["id"])
    check(client_pin.get_pin_retries()[0] == 8, "right PIN restores 8 retries")

    # The device was powered up before this script started.
    wait = 11 - (time.monotonic() - START)
    if wait > 0:
        time.sleep(wait)
    expect_ctap_error(CtapError.ERR.NOT_ALLOWED, ctap.reset, "reset outside the power-up window")
    check(ctap.get_info().options["clientPin"], "PIN still set after the refused reset")
    print("ALL CHECKS PASSED")


if __name__ == "__main__":
    main()
