#!/usr/bin/env python3
"""Clients logging in to submitd with OAuth2 access tokens, with Python's
smtplib (not the project's code) over implicit TLS.

usage: token_login.py PORT CA PROVIDER_URL IDP_STATE_DIR USER [dovecot]

Gets a real access token for USER from the provider (the device grant,
approved through the provider's test route), then:
  - logs in with OAUTHBEARER and with XOAUTH2 (smtplib.SMTP.auth) and
    sends a message as USER after each;
  - tries tokens that must be refused, each on its own connection: a
    token for another audience (from the provider), and tokens signed
    with the provider's own key that are expired, for another user, or
    for another audience, one signed with a key that is not the
    provider's, one with alg=none, and the good token named with another
    user in the SASL message.
With "dovecot": the token is an opaque one for urn:dovecot, which
submitd passes to Dovecot's oauth2 passdb; a good login with each
mechanism and one with a made-up token.
Prints one JSON object: what each attempt got.
"""

import base64
import json
import smtplib
import ssl
import sys
import time
import urllib.parse
import urllib.request

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

port, ca, provider, state, user = sys.argv[1:6]
ctx = ssl.create_default_context(cafile=ca)


def post(path, fields):
    body = urllib.parse.urlencode(fields).encode()
    request = urllib.request.Request(provider + path, data=body, method="POST")
    with urllib.request.urlopen(request, context=ctx, timeout=10) as r:
        text = r.read().decode()
    try:
        return json.loads(text)
    except ValueError:
        return text


def device_token(account, resource=None):
    fields = {"client_id": "relay-device", "scope": "openid offline_access smtp"}
    if resource:
        fields["resource"] = resource
    started = post("/device/auth", fields)
    query = urllib.parse.urlencode({"user_code": started["user_code"], "account": account})
    assert post("/test/approve?" + query, {}) == "approved"
    grant = "urn:ietf:params:oauth:grant-type:device_code"
    tokens = post("/token", {"grant_type": grant, "client_id": "relay-device",
                             "device_code": started["device_code"]})
    return tokens["access_token"]


def xoauth2(name, token):
    return "user=%s\x01auth=Bearer %s\x01\x01" % (name, token)


def oauthbearer(name, token):
    return "n,a=%s,\x01auth=Bearer %s\x01\x01" % (name, token)


def attempt(mechanism, message, send=False):
    """smtplib's own AUTH: the initial response, and on a 334 (RFC 7628's
    error challenge) the dummy answer, then the final reply."""
    seen = {}

    def auth_object(challenge=None):
        if challenge is None:
            return message
        seen["challenge"] = challenge.decode(errors="replace")
        return "\x01" if mechanism == "OAUTHBEARER" else ""

    with smtplib.SMTP_SSL("localhost", int(port), context=ctx, timeout=60) as s:
        s.ehlo()
        offered = s.esmtp_features.get("auth", "").split()
        try:
            code, text = s.auth(mechanism, auth_object, initial_response_ok=True)
        except smtplib.SMTPAuthenticationError as e:
            code, text = e.smtp_code, e.smtp_error
        result = {"code": code, "text": text.decode(errors="replace"), "offered": offered}
        if "challenge" in seen:
            result["challenge"] = seen["challenge"]
        if send and code == 235:
            refused = s.sendmail(user, ["bob@example.net"],
                                 "From: %s\r\nTo: bob@example.net\r\nSubject: token %s\r\n\r\nhi\r\n"
                                 % (user, mechanism))
            result["sent"] = not refused
        return result


if len(sys.argv) > 6 and sys.argv[6] == "dovecot":
    token = device_token(user, resource="urn:dovecot")
    print(json.dumps({
        "oauthbearer": attempt("OAUTHBEARER", oauthbearer(user, token), send=True),
        "xoauth2": attempt("XOAUTH2", xoauth2(user, token), send=True),
        "made_up": attempt("XOAUTH2", xoauth2(user, "made-up-token")),
    }))
    sys.exit(0)

with open(state + "/jwks.json") as f:
    provider_key = jwt.PyJWK(json.load(f)["keys"][0])
good = device_token(user)
claims = jwt.decode(good, options={"verify_signature": False})
now = int(time.time())


def forged(extra, key=None, algorithm="RS256", headers=None):
    body = dict(claims, **extra)
    return jwt.encode(body, key if key is not None else provider_key.key, algorithm=algorithm,
                      headers=headers if headers is not None else {"kid": "test-1"})


stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
unsigned = (base64.urlsafe_b64encode(b'{"alg":"none","kid":"test-1"}').rstrip(b"=").decode() + "." +
            base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode() + ".")
bad = {
    "wrong_audience_from_the_provider": device_token(user, resource="urn:other"),
    "wrong_audience": forged({"aud": "urn:other"}),
    "expired": forged({"exp": now - 600, "iat": now - 900}),
    "another_user": forged({"email": "mallory@example.org", "sub": "mallory@example.org"}),
    "another_key": forged({}, key=stranger),
    "alg_none": unsigned,
}
results = {
    "oauthbearer": attempt("OAUTHBEARER", oauthbearer(user, good), send=True),
    "xoauth2": attempt("XOAUTH2", xoauth2(user, good), send=True),
}
for name, token in bad.items():
    results[name] = attempt("OAUTHBEARER", oauthbearer(user, token))
results["named_as_another"] = attempt("XOAUTH2", xoauth2("mallory@example.org", good))
print(json.dumps(results))
