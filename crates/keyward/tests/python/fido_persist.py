#!/usr/bin/python3
"""Persistence check: phase `make` sets a PIN and makes a discoverable
credential, saving its id and public key to a file; after `keyward vcard`
restarts with the same --state, phase `assert` finds the credential without
an allow list and verifies the assertion with the saved key."""

import hashlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fido_check import SocketHidConnection  # noqa: E402
from fido2 import cbor  # noqa: E402
from fido2.cose import CoseKey  # noqa: E402
from fido2.ctap2 import Ctap2  # noqa: E402
from fido2.ctap2.pin import ClientPin  # noqa: E402
from fido2.hid import CtapHidDevice  # noqa: E402
from fido2.hid.base import HidDescriptor  # noqa: E402

phase, sock, saved = sys.argv[1], sys.argv[2], sys.argv[3]
PIN = "314159"
RP = "persist.keyward.example"
dev = CtapHidDevice(HidDescriptor(sock, 0x1050, 0x0407, 64, 64), SocketHidConnection(sock))
ctap = Ctap2(dev)
cdh = hashlib.sha256(phase.encode()).digest()
if phase == "make":
    pin = ClientPin(ctap)
    pin.set_pin(PIN)
    token = pin.get_pin_token(PIN, ClientPin.PERMISSION.MAKE_CREDENTIAL, RP)
    att = ctap.make_credential(
        cdh,
        {"id": RP},
        {"id": b"persisted-user", "name": "p"},
        [{"type": "public-key", "alg": -7}],
        options={"rk": True},
        pin_uv_param=pin.protocol.authenticate(token, cdh),
        pin_uv_protocol=pin.protocol.VERSION,
    )
    cd = att.auth_data.credential_data
    json.dump({"id": cd.credential_id.hex(), "key": cbor.encode(dict(cd.public_key)).hex()}, open(saved, "w"))
    print("made")
else:
    data = json.load(open(saved))
    check = ctap.get_info()
    assert check.options["clientPin"], "PIN lost across restart"
    pin = ClientPin(ctap)
    token = pin.get_pin_token(PIN, ClientPin.PERMISSION.GET_ASSERTION, RP)
    a = ctap.get_assertion(RP, cdh, pin_uv_param=pin.protocol.authenticate(token, cdh), pin_uv_protocol=pin.protocol.VERSION)
    assert a.credential["id"].hex() == data["id"], "another credential"
    a.verify(cdh, CoseKey.parse(cbor.decode(bytes.fromhex(data["key"]))))
    assert a.user["id"] == b"persisted-user"
    print("asserted")
