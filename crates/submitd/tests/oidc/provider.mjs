// The identity provider of the end-to-end tests: oidc-provider (an
// OpenID-certified implementation, not the project's code) over HTTPS on
// loopback, with short-lived JWT access tokens so refresh is exercised.
//
// usage: node provider.mjs PORT CERT KEY STATE_DIR SECONDS
//   PORT 0 picks a free port. STATE_DIR keeps the signing keys
//   (jwks.json, private; public-jwks.json for the test smarthost), so a
//   restarted provider signs with the same keys. Environment:
//   TOKEN_TTL (seconds, default 30), ASSERTION_CERT (a PEM certificate
//   whose key the client "relay-jwt" signs its assertions with).
//
// Access tokens are JWTs for the resource urn:submitd:smtp (or urn:other,
// when asked), with an email claim for a person's tokens.
// urn:dovecot gets opaque tokens, which the client "dovecot" (secret
// "dovecot-secret", HTTP Basic) introspects for Dovecot's oauth2 passdb.
// Clients: relay-cc (client credentials, secret "cc-secret", sent in the
// form), relay-jwt (client credentials, private_key_jwt), relay-device
// (the device grant and refresh tokens, a public client; refresh tokens
// rotate on every use).
//
// Prints "ready PORT", then one JSON line per token request
// ({"event":"token","grant":...,"status":...,"error":...,"at":ms}); stops
// after SECONDS. The first pending device-code poll gets slow_down.
// Test-only routes: POST /test/approve?user_code=…&account=… approves a
// pending device code as that account, as a person signing in would;
// GET /interaction/UID (where the authorization endpoint sends the
// browser) signs in as TEST_ACCOUNT and consents. The client relay-code
// (public, native, loopback redirect) uses the authorization code grant.

import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import * as jose from 'jose';
import Provider from 'oidc-provider';

const [port, certFile, keyFile, stateDir, seconds] = process.argv.slice(2);
const ttl = Number(process.env.TOKEN_TTL || 30);
const audience = 'urn:submitd:smtp';

fs.mkdirSync(stateDir, { recursive: true });
const jwksFile = path.join(stateDir, 'jwks.json');
let jwks;
if (fs.existsSync(jwksFile)) {
  jwks = JSON.parse(fs.readFileSync(jwksFile, 'utf8'));
} else {
  const { privateKey } = await jose.generateKeyPair('RS256', { extractable: true });
  const jwk = await jose.exportJWK(privateKey);
  jwk.kid = 'test-1';
  jwk.alg = 'RS256';
  jwk.use = 'sig';
  jwks = { keys: [jwk] };
  fs.writeFileSync(jwksFile, JSON.stringify(jwks), { mode: 0o600 });
}
const publicKeys = {
  keys: jwks.keys.map(({ d, p, q, dp, dq, qi, ...pub }) => pub),
};
fs.writeFileSync(path.join(stateDir, 'public-jwks.json'), JSON.stringify(publicKeys));

const clients = [
  {
    client_id: 'relay-cc',
    client_secret: 'cc-secret',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_post',
  },
  {
    // Dovecot's oauth2 passdb, introspecting tokens (HTTP Basic).
    client_id: 'dovecot',
    client_secret: 'dovecot-secret',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_basic',
  },
  {
    // A native app with a loopback redirect (any port, RFC 8252).
    client_id: 'relay-code',
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    redirect_uris: ['http://127.0.0.1/'],
    token_endpoint_auth_method: 'none',
    application_type: 'native',
  },
  {
    client_id: 'relay-device',
    grant_types: ['urn:ietf:params:oauth:grant-type:device_code', 'refresh_token'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'none',
    application_type: 'native',
  },
];
if (process.env.ASSERTION_CERT) {
  const pem = fs.readFileSync(process.env.ASSERTION_CERT, 'utf8');
  const key = await jose.importX509(pem, 'RS256', { extractable: true });
  const jwk = await jose.exportJWK(key);
  clients.push({
    client_id: 'relay-jwt',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'private_key_jwt',
    token_endpoint_auth_signing_alg: 'RS256',
    jwks: { keys: [{ ...jwk, alg: 'RS256', use: 'sig' }] },
  });
}

let issuer;
const provider = await (async () => {
  // The issuer needs the port; a port of 0 is resolved first.
  let listenPort = Number(port);
  if (listenPort === 0) {
    const probe = https.createServer();
    await new Promise((r) => probe.listen(0, '127.0.0.1', r));
    listenPort = probe.address().port;
    await new Promise((r) => probe.close(r));
  }
  issuer = `https://localhost:${listenPort}`;
  return new Provider(issuer, {
    clients,
    jwks,
    // Sign-in pages are the test's: /interaction/UID signs in as
    // TEST_ACCOUNT and consents, as a person clicking through would.
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    findAccount: async (ctx, id) => ({
      accountId: id,
      claims: async () => ({ sub: id, email: id }),
    }),
    claims: { openid: ['sub'], email: ['email'] },
    scopes: ['openid', 'offline_access', 'smtp'],
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      deviceFlow: { enabled: true },
      introspection: { enabled: true },
      revocation: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => audience,
        useGrantedResource: () => true,
        // urn:other: a resource that is not submitd (tokens for the wrong
        // audience).
        getResourceServerInfo: (ctx, indicator) => ({
          scope: 'smtp',
          audience: ['urn:other', 'urn:dovecot'].includes(indicator) ? indicator : audience,
          accessTokenTTL: ttl,
          // urn:dovecot: opaque tokens, which Dovecot introspects.
          accessTokenFormat: indicator === 'urn:dovecot' ? 'opaque' : 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        }),
      },
    },
    ttl: {
      AccessToken: ttl,
      ClientCredentials: ttl,
      DeviceCode: 600,
      RefreshToken: 3600,
      Grant: 3600,
      IdToken: 3600,
    },
    rotateRefreshToken: true,
    // A person's access token carries their address, the claim submitd
    // logs clients in by (login_claim = "email").
    extraTokenClaims: async (ctx, token) => (token.accountId ? { email: token.accountId } : undefined),
    issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  });
})();

let slowedDown = false;
provider.use(async (ctx, next) => {
  if (ctx.path.startsWith('/interaction/') && ctx.method === 'GET') {
    const details = await provider.interactionDetails(ctx.req, ctx.res);
    if (process.env.DEBUG_INTERACTIONS) console.error(JSON.stringify(details.prompt));
    let result;
    if (details.prompt.name === 'login') {
      result = { login: { accountId: process.env.TEST_ACCOUNT || 'relay@example.org' } };
    } else {
      const grant = details.grantId
        ? await provider.Grant.find(details.grantId)
        : new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
      const missing = details.prompt.details;
      grant.addOIDCScope((missing.missingOIDCScope || []).join(' '));
      for (const [resource, scopes] of Object.entries(missing.missingResourceScopes || {})) {
        grant.addResourceScope(resource, scopes.join(' '));
      }
      result = { consent: { grantId: await grant.save() } };
    }
    await provider.interactionFinished(ctx.req, ctx.res, result, { mergeWithLastSubmission: true });
    ctx.respond = false;
    return;
  }
  if (ctx.path === '/test/approve' && ctx.method === 'POST') {
    const userCode = String(ctx.query.user_code || '').toUpperCase().replace(/[^A-Z0-9]/g, '');
    const accountId = String(ctx.query.account || '');
    const code = await provider.DeviceCode.findByUserCode(userCode);
    if (!code) {
      ctx.status = 404;
      ctx.body = 'no such code';
      return;
    }
    // The resource the device asked for (urn:other: the wrong audience).
    const resource = (code.params && code.params.resource) || audience;
    const grant = new provider.Grant({ accountId, clientId: code.clientId });
    grant.addOIDCScope('openid offline_access');
    grant.addResourceScope(resource, 'smtp');
    const grantId = await grant.save();
    Object.assign(code, {
      accountId,
      grantId,
      authTime: Math.floor(Date.now() / 1000),
      scope: 'openid offline_access smtp',
      resource,
    });
    await code.save();
    ctx.body = 'approved';
    return;
  }
  await next();
  if (ctx.path === '/token') {
    const grant = ctx.oidc && ctx.oidc.params ? ctx.oidc.params.grant_type : undefined;
    // The first pending device poll ever is answered slow_down (RFC 8628
    // §3.5), which oidc-provider itself never sends.
    if (grant === 'urn:ietf:params:oauth:grant-type:device_code' && !slowedDown
        && ctx.body && ctx.body.error === 'authorization_pending') {
      slowedDown = true;
      ctx.body = { error: 'slow_down', error_description: 'polling too fast' };
    }
    const error = ctx.body && ctx.body.error;
    console.log(JSON.stringify({ event: 'token', grant, status: ctx.status, error, at: Date.now() }));
  }
});

const server = https.createServer(
  { cert: fs.readFileSync(certFile), key: fs.readFileSync(keyFile) },
  provider.callback(),
);
server.listen(Number(new URL(issuer).port), '127.0.0.1', () => {
  console.log(`ready ${server.address().port}`);
});
setTimeout(() => process.exit(0), Number(seconds) * 1000);
