#!/usr/bin/python3
"""Blocks a FIDO PIN with python-fido2 over PC/SC: wrong PINs until the
authenticator says PIN_BLOCKED (exit 0) or PIN_AUTH_BLOCKED (exit 2: the
caller power-cycles the device and runs this again). Prints the last CTAP
error's name."""

import argparse
import os
import sys
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fido_check import open_device  # noqa: E402
from fido2.ctap import CtapError  # noqa: E402
from fido2.ctap2 import Ctap2  # noqa: E402
from fido2.ctap2.pin import ClientPin  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--reader", default="Virtual")
    p.add_argument("--hid-socket")
    p.add_argument("--wrong-pin", default="000000")
    args = p.parse_args()
    dev = open_device(types.SimpleNamespace(hid_socket=args.hid_socket, reader=args.reader))
    pin = ClientPin(Ctap2(dev))
    for _ in range(16):
        try:
            pin.get_pin_token(args.wrong_pin, ClientPin.PERMISSION.GET_ASSERTION, "login.microsoft.com")
            print("the wrong PIN was accepted")
            sys.exit(1)
        except CtapError as e:
            if e.code == CtapError.ERR.PIN_INVALID:
                continue
            print(e.code.name)
            if e.code == CtapError.ERR.PIN_BLOCKED:
                sys.exit(0)
            if e.code == CtapError.ERR.PIN_AUTH_BLOCKED:
                sys.exit(2)
            sys.exit(1)
    print("still not blocked")
    sys.exit(1)


if __name__ == "__main__":
    main()
