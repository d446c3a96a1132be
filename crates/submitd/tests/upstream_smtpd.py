#!/usr/bin/env python3
"""A third-party smarthost for the end-to-end tests: aiosmtpd (not the
project's code) over implicit TLS on loopback, requiring AUTH, writing each
message it accepts, byte for byte as received after dot-unstuffing, to
OUT/N.eml with its envelope in OUT/N.env.

usage: upstream_smtpd.py PORT CERT KEY USER PASSWORD OUT SECONDS

PORT 0 picks a free port.

PASSWORD "jwks:FILE" makes it a smarthost that takes only XOAUTH2 (as
Microsoft 365 and Gmail do once passwords are off): each access token
is checked with PyJWT against the identity provider's public keys in
FILE (RS256 only, audience urn:submitd:smtp, not expired) and must name
USER as its subject, or be an application's token (client credentials,
whose subject is the client). A refused token gets RFC 7628's error challenge, then 535.
The token's jti, sub and client_id go into each message's .env.

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
                    "session": str(id(session)),
                    "token": session.auth_data
                    if isinstance(session.auth_data, dict)
                    else None,
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


class TokenStore(Store):
    """Store, taking XOAUTH2 only, with tokens checked against a JWKS."""

    def __init__(self, out, user, jwks_file):
        super().__init__(out)
        self.user = user
        self.jwks_file = jwks_file

    def check(self, token):
        import jwt

        with open(self.jwks_file) as f:
            keys = jwt.PyJWKSet.from_dict(json.load(f))
        kid = jwt.get_unverified_header(token).get("kid")
        key = next(k for k in keys.keys if k.key_id == kid)
        claims = jwt.decode(
            token, key.key, algorithms=["RS256"], audience="urn:submitd:smtp"
        )
        # A person's token names the mailbox; an application's (client
        # credentials) names the application itself.
        if claims.get("sub") not in (self.user, claims.get("client_id")):
            raise ValueError("token for another user")
        return claims

    async def auth_XOAUTH2(self, server, args):
        import base64

        try:
            blob = base64.b64decode(args[1], validate=True)
            fields = dict(
                part.split(b"=", 1) for part in blob.split(b"\x01") if b"=" in part
            )
            user = fields[b"user"].decode()
            token = fields[b"auth"].decode().split(" ", 1)[1]
            if user != self.user:
                raise ValueError("another user")
            claims = self.check(token)
        except Exception:
            error = json.dumps({"status": "401", "schemes": "bearer", "scope": "smtp"})
            await server.challenge_auth(error)
            return AuthResult(success=False)
        data = {k: claims.get(k) for k in ("jti", "sub", "client_id", "exp")}
        return AuthResult(success=True, auth_data=data)


class TokenSMTP(SMTP):
    # AUTH lines with a token are a few KB (aiosmtpd reads lines of at most
    # 1001 octets by default).
    line_length_limit = 16384


class ImplicitTlsController(Controller):
    def factory(self):
        # The socket is TLS from the first byte, so AUTH is safe; aiosmtpd
        # only knows of STARTTLS, hence auth_require_tls=False here.
        tokens = isinstance(self.handler, TokenStore)
        server = (TokenSMTP if tokens else SMTP)(
            self.handler,
            authenticator=None if tokens else self.authenticator,
            auth_required=True,
            auth_require_tls=False,
            auth_exclude_mechanism=["PLAIN", "LOGIN"] if tokens else [],
            decode_data=False,
            enable_SMTPUTF8=True,
        )
        # AUTH lines with a token are a few KB.
        server.command_size_limits["AUTH"] = 16384
        return server


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
    if password.startswith("jwks:"):
        handler = TokenStore(out, user, password[len("jwks:"):])
    else:
        handler = Store(out)
    controller = ImplicitTlsController(
        handler,
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
