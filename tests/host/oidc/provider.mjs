// A real OAuth 2.0 / OpenID Connect provider for the API and app tests: npm `oidc-provider`
// on loopback. Configuration comes as JSON in OIDC_TEST_CONFIG:
//   {"port", "audience", "app_client_id", "redirect_uris": [...],
//    "users": {"<login>": {"stations": [...], "scope": "...", "ttl": seconds}},
//    "clients": [{"client_id", "client_secret", "scope", "stations", "ttl"}]}
// Users log in with the provider's development login form (any password); access tokens are
// JWTs (RFC 9068) for the API's audience, with the user's station ids in the `stations` claim.
// Prints {"issuer": ...} on stdout when it listens.
import crypto from 'node:crypto';
import Provider from 'oidc-provider';

const cfg = JSON.parse(process.env.OIDC_TEST_CONFIG);
const issuer = `http://127.0.0.1:${cfg.port}`;
const { privateKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: `k-${Date.now()}`, use: 'sig', alg: 'ES256' };
const ALL = 'v2g:read v2g:control v2g:admin';

const clients = [{
  client_id: cfg.app_client_id,
  token_endpoint_auth_method: 'none',            // a public client: PKCE instead of a secret
  redirect_uris: cfg.redirect_uris,
  grant_types: ['authorization_code'],
  response_types: ['code'],
  scope: `openid ${ALL}`,
  id_token_signed_response_alg: 'ES256',
}];
for (const c of cfg.clients || []) {
  clients.push({ client_id: c.client_id, client_secret: c.client_secret, grant_types: ['client_credentials'],
    redirect_uris: [], response_types: [], scope: c.scope, id_token_signed_response_alg: 'ES256' });
}
const byClient = Object.fromEntries((cfg.clients || []).map((c) => [c.client_id, c]));

function who(token) {
  if (token.accountId) return cfg.users?.[token.accountId] || {};
  return byClient[token.clientId] || {};
}

const provider = new Provider(issuer, {
  clients,
  scopes: ['openid', ...ALL.split(' ')],
  jwks: { keys: [jwk] },
  pkce: { required: () => true },
  clientBasedCORS: () => true,
  features: {
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => cfg.audience,
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({ scope: ALL, audience: cfg.audience, accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'ES256' } } }),
    },
  },
  // the provider's user directory decides the scopes a user gets and the stations assigned
  extraTokenClaims: (ctx, token) => ({ stations: who(token).stations || [] }),
  ttl: { AccessToken: (ctx, token) => who(token).ttl || 600, Session: 3600, Grant: 3600, Interaction: 600 },
  loadExistingGrant: async (ctx) => {
    // the first-party app: no consent screen; the grant is what the user's entry allows
    const accountId = ctx.oidc.session.accountId;
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId });
    const allowed = (cfg.users?.[accountId]?.scope || 'v2g:read v2g:control').split(' ');
    grant.addOIDCScope(['openid', ...allowed].join(' '));
    grant.addResourceScope(cfg.audience, allowed.join(' '));
    await grant.save();
    return grant;
  },
});
provider.proxy = false;
provider.listen(cfg.port, '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ issuer }) + '\n');
});
