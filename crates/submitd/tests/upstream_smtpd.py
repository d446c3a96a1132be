#!/usr/bin/env python3
"""A third-party smarthost for the end-to-end tests: aiosmtpd (not the
project's code) over implicit TLS on loopback, requiring AUTH, writing each
message it accepts, byte for byte as received after dot-unstuffing, to
OUT/N.eml with its envelope in OUT/N.env.

usage: upstream_smtpd.py PORT CERT KEY USER PASSWORD OUT SECONDS

PORT 0 picks a free port.

Prints "ready PORT" when listening; stops by itself after SECONDS.
"""

import json
import logging
import os
import ssl
import sys
import socket
import time
import warnings

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword, SMTP


class Store:
    def __init__(self, out):
        self.out = out
        # Go on from an earlier run's files (a restarted upstream).
        self.count = len([n for n in os.listdir(out) if n.endswith(".eml")])

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        base = os.path.join(self.out, str(self.count))
        # Write, then rename: the test reads only finished files.
        with open(base + ".eml.tmp", "wb") as f:
            f.write(envelope.original_content)
        with open(base + ".env.tmp", "w") as f:
            json.dump(
                {
                    "mail_from": envelope.mail_from,
                    "rcpt_tos": envelope.rcpt_tos,
                    "mail_options": envelope.mail_options,
                    "authenticated": session.authenticated,
                },
                f,
            )
        os.rename(base + ".env.tmp", base + ".env")
        os.rename(base + ".eml.tmp", base + ".eml")
        return "250 2.0.0 stored"


def authenticator(user, password):
    def check(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == user.encode()
            and auth_data.password == password.encode()
        )
        return AuthResult(success=ok)

    return check


class ImplicitTlsController(Controller):
    def factory(self):
        # The socket is TLS from the first byte, so AUTH is safe; aiosmtpd
        # only knows of STARTTLS, hence auth_require_tls=False here.
        return SMTP(
            self.handler,
            authenticator=self.authenticator,
            auth_required=True,
            auth_require_tls=False,
            decode_data=False,
            enable_SMTPUTF8=True,
        )


def main():
    port, cert, key, user, password, out, seconds = sys.argv[1:8]
    # AUTH without STARTTLS is safe here: the socket is TLS from the start.
    warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    if port == "0":
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    os.makedirs(out, exist_ok=True)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    controller = ImplicitTlsController(
        Store(out),
        hostname="127.0.0.1",
        port=int(port),
        ssl_context=ctx,
        server_hostname="localhost",
    )
    controller.authenticator = authenticator(user, password)
    controller.start()
    print("ready", controller.port, flush=True)
    deadline = time.monotonic() + float(seconds)
    try:
        while time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
