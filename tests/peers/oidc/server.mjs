// A real OAuth 2.1 authorization server for the integration tests: npm `oidc-provider`,
// installed by tests/peers/install into target/peers/oidc.
// Usage: node server.mjs PORT   (0 = a free port). Listens on 127.0.0.1 only and prints one
// line to stdout when ready: {"issuer": "http://127.0.0.1:PORT", "port": PORT}.
// Client credentials grant; `resource=<URI>` gives an RS256 JWT access token (typ at+jwt)
// with aud = URI, sub = client_id = the client, scope = the granted scopes. Without
// `resource` the token is opaque: always send one. A scope the client may not have gives
// invalid_scope; a resource not 127.0.0.1:* nor https://nhi.example.com/mcp, invalid_target.
// Device authorization grant (RFC 8628) for the public client `nhi-mcp-cli` (no secret,
// scope nhi:read nhi:approve): POST /device/auth, then a person signs in at /device with the
// user code through oidc-provider's devInteractions (any login name becomes the token's `sub`,
// any password), and the token endpoint gives the same RS256 JWT as above.
// Stops on SIGTERM. Node 20 runs it (oidc-provider warns on stderr that it wants Node 22).
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { createServer } from 'node:http';

// oidc-provider's notices go through console.info (stdout): keep stdout for the ready line.
console.info = console.log = console.error;

const entry = new URL('../../../target/peers/oidc/node_modules/oidc-provider/lib/index.js', import.meta.url);
const { default: Provider, errors } = await import(entry);

const SCOPES = ['nhi:read', 'nhi:propose', 'nhi:apply', 'nhi:approve', 'nhi:audit'];
const CLIENTS = {
  reader: 'nhi:read',
  proposer: 'nhi:read nhi:propose',
  applier: 'nhi:read nhi:apply',
  agent: 'nhi:read nhi:propose nhi:apply',
  'admin-alice': 'nhi:read nhi:approve',
  'admin-bob': 'nhi:read nhi:approve',
  // Its tokens live one second: for the expired-token test.
  'short-lived': 'nhi:read',
  // A client id that is one of nhi-mcp's own principal names: its tokens must be refused.
  Anonymous: 'nhi:read',
};
// Public clients that sign a person in with the device authorization grant.
const DEVICE_CLIENTS = { 'nhi-mcp-cli': 'nhi:read nhi:approve' };

// A new signing key at every start: clients must fetch the JWKS.
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), alg: 'RS256', use: 'sig' };

const server = createServer();
server.listen(Number(process.argv[2] ?? 0), '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const provider = new Provider(issuer, {
    jwks: { keys: [jwk] },
    scopes: SCOPES,
    clients: [
      ...Object.entries(CLIENTS).map(([id, scope]) => ({
        client_id: id, client_secret: `${id}-secret`, scope,
        grant_types: ['client_credentials'], redirect_uris: [], response_types: [],
        token_endpoint_auth_method: 'client_secret_basic',
      })),
      ...Object.entries(DEVICE_CLIENTS).map(([id, scope]) => ({
        client_id: id, scope,
        grant_types: ['urn:ietf:params:oauth:grant-type:device_code'], redirect_uris: [],
        response_types: [], token_endpoint_auth_method: 'none',
      })),
    ],
    clientAuthMethods: ['client_secret_basic', 'client_secret_post', 'none'],
    features: {
      // The sign-in pages the device flow sends a person to; client credentials never use them.
      devInteractions: { enabled: true },
      deviceFlow: { enabled: true },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        getResourceServerInfo(ctx, resource, client) {
          if (!resource.startsWith('http://127.0.0.1:') && resource !== 'https://nhi.example.com/mcp') {
            throw new errors.InvalidTarget();
          }
          return {
            scope: SCOPES.join(' '), audience: resource,
            accessTokenTTL: client?.clientId === 'short-lived' ? 1 : 300,
            accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },
  });
  server.on('request', provider.callback());
  process.stdout.write(`{"issuer": "${issuer}", "port": ${port}}\n`);
});
