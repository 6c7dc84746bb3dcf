#!/usr/bin/python3
"""Signs in with a passkey Keyward registered: python-fido2 runs
getAssertion for the relying party with the PIN (discoverable credential,
no allow list), checks that the credential is the registered one, and
verifies the signature with the public key the simulated tenant stored."""

import argparse
import base64
import hashlib
import os
import sys
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fido_check import open_device  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from fido2.cose import ES256  # noqa: E402
from fido2.ctap2 import Ctap2  # noqa: E402
from fido2.ctap2.pin import ClientPin  # noqa: E402


def b64url_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--reader", default="Virtual")
    p.add_argument("--hid-socket")
    p.add_argument("--rp", required=True)
    p.add_argument("--pin", required=True)
    p.add_argument("--credential-id", required=True, help="base64url")
    p.add_argument("--public-key", required=True, help="uncompressed SEC1, hex")
    args = p.parse_args()

    dev = open_device(types.SimpleNamespace(hid_socket=args.hid_socket, reader=args.reader))
    ctap = Ctap2(dev)
    pin = ClientPin(ctap)
    token = pin.get_pin_token(args.pin, ClientPin.PERMISSION.GET_ASSERTION, args.rp)
    cdh = hashlib.sha256(b"keyward entra sign-in").digest()
    a = ctap.get_assertion(
        args.rp, cdh, pin_uv_param=pin.protocol.authenticate(token, cdh), pin_uv_protocol=pin.protocol.VERSION
    )
    if a.credential["id"] != b64url_decode(args.credential_id):
        print("another credential answered")
        sys.exit(1)
    flags = a.auth_data.flags
    if not (flags & 0x01 and flags & 0x04):
        print("user present and verified flags missing")
        sys.exit(1)
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), bytes.fromhex(args.public_key))
    a.verify(cdh, ES256.from_cryptography_key(key))
    print("assertion verified")


if __name__ == "__main__":
    main()
