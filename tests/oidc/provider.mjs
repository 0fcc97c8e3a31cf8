// An OpenID provider for the test suite: the certified `oidc-provider` package on loopback.
//
//   node tests/oidc/provider.mjs CONFIG.json
//
// CONFIG.json (written by tests/servers.py):
//   { "port": 1234, "audience": "...", "scope": "mlflow",
//     "clients": [ { "client_id", "client_secret"?, "grant_types", "username"?, "groups"?,
//                    "access_token_ttl"? } ],
//     "users": { "alice": { "groups": ["mlflow"] } },
//     "issuer"?: "https://sts.windows.net/TENANT/", "resources"?: { "https://storage.azure.com": "" },
//     "not_before"?: true }
//
// Access tokens are JWTs for one resource server (the registry, `audience`), signed with a key
// made at start-up and published at the provider's JWKS endpoint, which is how a registry that
// trusts this provider checks them. Each token carries `preferred_username` and `groups`: a job
// client's from its entry in `clients`, a person's from `users`. The development interactions
// (a login form that takes any password for a configured user, and a consent page) are enabled:
// the device flow is completed by posting to those pages.
//
// `issuer` replaces the loopback URL as the issuer the provider announces and signs into tokens
// (the endpoints stay on loopback); with `resources`, more resource servers (indicator -> scope)
// get JWT access tokens; `not_before` adds an `nbf` claim. Together they make tokens shaped like
// Entra ID's v1 tokens for Azure Storage, which Azurite's OAuth mode takes.
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';

import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const issuer = config.issuer ?? `http://127.0.0.1:${config.port}`;
const resources = config.resources ?? {};
const clientsById = new Map(config.clients.map((c) => [c.client_id, c]));
const users = config.users ?? {};

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'test-key-1', alg: 'RS256', use: 'sig' };

function ttlFor(clientId, fallback) {
  return clientsById.get(clientId)?.access_token_ttl ?? fallback;
}

const provider = new Provider(issuer, {
  clients: config.clients.map((c) => ({
    client_id: c.client_id,
    ...(c.client_secret
      ? { client_secret: c.client_secret, token_endpoint_auth_method: 'client_secret_basic' }
      : { token_endpoint_auth_method: 'none' }),
    grant_types: c.grant_types,
    response_types: [],
    redirect_uris: [],
  })),
  jwks: { keys: [jwk] },
  cookies: { keys: [randomBytes(16).toString('hex')] },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['preferred_username', 'name'],
    groups: ['groups'],
  },
  scopes: ['openid', 'offline_access', 'email', 'profile', 'groups', config.scope],
  conformIdTokenClaims: false,
  formats: {
    customizers: {
      async jwt(ctx, token, jwt) {
        if (config.not_before) jwt.payload.nbf = jwt.payload.iat;
      },
    },
  },
  async findAccount(ctx, id) {
    const user = users[id];
    if (!user) return undefined;
    return {
      accountId: id,
      async claims() {
        return {
          sub: id,
          email: `${id}@example.test`,
          email_verified: true,
          preferred_username: id,
          name: id,
          groups: user.groups ?? [],
        };
      },
    };
  },
  features: {
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    deviceFlow: { enabled: true },
    revocation: { enabled: true },
    introspection: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // With more resources, a grant covers them all (as Entra's refresh tokens do) and a token
      // is for the registry unless another resource is asked for.
      defaultResource: (ctx, client, oneOf) => {
        if (oneOf) return oneOf.includes(config.audience) ? config.audience : oneOf[0];
        const others = Object.keys(resources);
        return others.length ? [config.audience, ...others] : config.audience;
      },
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, indicator) => {
        const known = indicator === config.audience || Object.hasOwn(resources, indicator);
        if (!known) throw new Provider.errors.InvalidTarget();
        return {
          scope: indicator === config.audience ? config.scope : resources[indicator],
          audience: indicator,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
  async extraTokenClaims(ctx, token) {
    if (token.kind === 'ClientCredentials') {
      const client = clientsById.get(token.clientId) ?? {};
      return { preferred_username: client.username ?? token.clientId, groups: client.groups ?? [] };
    }
    if (token.accountId) {
      const user = users[token.accountId] ?? {};
      return {
        preferred_username: token.accountId,
        email: `${token.accountId}@example.test`,
        groups: user.groups ?? [],
      };
    }
    return undefined;
  },
  async issueRefreshToken(ctx, client) {
    return client.grantTypeAllowed('refresh_token');
  },
  ttl: {
    AccessToken: (ctx, token, client) => ttlFor(client?.clientId ?? token.clientId, 3600),
    ClientCredentials: (ctx, token, client) => ttlFor(client?.clientId ?? token.clientId, 3600),
    DeviceCode: 600,
    Grant: 86400,
    IdToken: 3600,
    Interaction: 600,
    RefreshToken: 86400,
    Session: 86400,
  },
});

provider.on('server_error', (ctx, err) => console.error('server_error', err));
provider.listen(config.port, '127.0.0.1', () => {
  console.log(`oidc-provider for ${issuer} listening on 127.0.0.1:${config.port}`);
});
