// A real OpenID provider for the proxy's OIDC tests, built on oidc-provider
// (a certified OpenID Connect implementation); started by
// tests/integration/idpfix.py.
//
//   node idp.mjs [PORT] [--ctl-port N] [--redirect-uri URI]... [--strict-redirects]
//
// Listens on 127.0.0.1:PORT (0 or absent: any free port) for the provider and
// on 127.0.0.1:N (default 0) for the test control API, then prints one line
//   PORT <provider port> CTL <control port>
// The issuer is http://127.0.0.1:<provider port> (plain http on loopback).
//
// The one client: client_id proxy-test, client_secret proxy-secret
// (client_secret_basic; client_secret_post is accepted too), grant
// authorization_code, response type code, PKCE S256 required. Redirect URIs:
// the ones given with --redirect-uri (or IDP_REDIRECT_URIS, separated by
// spaces or commas, or set later with /_ctl/redirect_uris), and, unless
// --strict-redirects, any http(s) URI whose path ends in /callback (the proxy
// picks its port at start-up, after this server is up).
//
// Scopes openid profile; claims sub, org (custom, in the ID token) and name.
// Accounts: alice (org o1, "Alice Example") and bob (org o2, "Bob Example"),
// password "pw" for both. Login is a plain HTML form at /interaction/<uid>
// (inputs named "login" and "password", a submit button); consent is granted
// automatically (loadExistingGrant), there is no consent page.
//
// ID tokens are signed with RS256 unless /_ctl/alg says ES256; the key set
// always holds one RSA and one P-256 key (kids rsa-<n>, ec-<n>).
//
// Control API (127.0.0.1:<control port>, JSON in and out; every answer 200
// with JSON, or 400/404/500 with {"error": ...}):
//   GET|POST /_ctl/ping              {"ok": true}
//   GET|POST /_ctl/state             issuer, port, alg, id_token_ttl, kids, up, redirect_uris
//   POST /_ctl/rotate {keep_old}     a brand-new RSA and EC key (new kids); the
//                                    old ones leave the JWKS unless keep_old
//                                    is true. Answers {"kids": [...]}
//   POST /_ctl/alg {alg}             RS256 | ES256: the client's
//                                    id_token_signed_response_alg
//   POST /_ctl/id_token_ttl {seconds}
//   POST /_ctl/down {mode}           "refuse" (default): the listening socket
//                                    is closed and open connections dropped, so
//                                    a connect is refused; "reset": still
//                                    listening, but every new connection is
//                                    answered with a TCP RST
//   POST /_ctl/up                    listens again on the same port
//   GET|POST /_ctl/log               the provider-port requests since the last
//                                    reset: [{method, path, query, time}]
//                                    (time: seconds since the epoch)
//   POST /_ctl/redirect_uris {uris, strict}  replaces the registered list
//                                    (and the /callback allowance if strict is given)
//   POST /_ctl/reset                 initial keys, RS256, TTL 3600 s, up, the
//                                    start-up redirect list, empty log
import crypto from 'node:crypto';
import http from 'node:http';
import process from 'node:process';

import Provider from 'oidc-provider';

const CLIENT_ID = 'proxy-test';
const CLIENT_SECRET = 'proxy-secret';
const DEFAULT_ID_TOKEN_TTL = 3600;
const ACCOUNTS = {
  alice: { password: 'pw', org: 'o1', name: 'Alice Example' },
  bob: { password: 'pw', org: 'o2', name: 'Bob Example' },
};
const ALGS = new Set(['RS256', 'ES256']);

// ------------------------------------------------------------ arguments --

function parseArgs(argv) {
  const out = { port: 0, ctlPort: 0, redirectUris: [], strict: false };
  for (let i = 0; i < argv.length; i += 1) {
    const a = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      i += 1;
      return argv[i];
    };
    if (a === '--ctl-port') out.ctlPort = Number(value());
    else if (a === '--redirect-uri') out.redirectUris.push(value());
    else if (a === '--strict-redirects') out.strict = true;
    else if (/^\d+$/.test(a)) out.port = Number(a);
    else throw new Error(`unknown argument ${a}`);
  }
  if (process.env.IDP_REDIRECT_URIS) {
    out.redirectUris.push(...process.env.IDP_REDIRECT_URIS.split(/[\s,]+/).filter(Boolean));
  }
  for (const uri of out.redirectUris) new URL(uri); // throws on a bad one
  return out;
}

const ARGS = parseArgs(process.argv.slice(2));

// ----------------------------------------------------------------- keys --

let keySerial = 0;

function newKeyPair() {
  keySerial += 1;
  const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey
    .export({ format: 'jwk' });
  const ec = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey
    .export({ format: 'jwk' });
  return [
    { ...rsa, kid: `rsa-${keySerial}`, use: 'sig', alg: 'RS256' },
    { ...ec, kid: `ec-${keySerial}`, use: 'sig', alg: 'ES256' },
  ];
}

const INITIAL_KEYS = newKeyPair();

// ---------------------------------------------------------------- state --

const state = {
  keys: INITIAL_KEYS,
  alg: 'RS256',
  idTokenTtl: DEFAULT_ID_TOKEN_TTL,
  redirectUris: [...ARGS.redirectUris],
  strict: ARGS.strict,
  log: [],
  up: false,
  downMode: null,
};

let issuer;
let provider;
let handler;

function installProvider() {
  provider = buildProvider();
  handler = provider.callback();
}

function redirectAllowed(value) {
  let parsed;
  try {
    parsed = new URL(value);
  } catch {
    return false;
  }
  if (parsed.hash) return false;
  if (state.redirectUris.some((u) => new URL(u).href === parsed.href)) return true;
  return !state.strict && ['http:', 'https:'].includes(parsed.protocol)
    && !parsed.username && !parsed.password && parsed.pathname.endsWith('/callback');
}

function buildProvider() {
  const registered = state.redirectUris.length ? state.redirectUris
    : ['http://127.0.0.1/callback'];
  const p = new Provider(issuer, {
    clients: [{
      client_id: CLIENT_ID,
      client_secret: CLIENT_SECRET,
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: ['authorization_code'],
      response_types: ['code'],
      redirect_uris: registered,
      id_token_signed_response_alg: state.alg,
    }],
    jwks: { keys: state.keys },
    cookies: {
      keys: ['idp-test-cookie-key-1'],
      // Chromium drops SameSite=None cookies that are not Secure (plain http here).
      long: { httpOnly: true, sameSite: 'lax' },
      short: { httpOnly: true, sameSite: 'lax' },
    },
    scopes: ['openid', 'profile'],
    claims: { openid: ['sub', 'org'], profile: ['name'] },
    // All claims of the granted scopes go into the ID token, not only userinfo.
    conformIdTokenClaims: false,
    // Daytona sends audience=<OIDC_AUDIENCE> in the authorization request.
    extraParams: ['audience'],
    pkce: { methods: ['S256'], required: () => true },
    features: {
      devInteractions: { enabled: false },
      // the proxy does not call these; left off to keep the surface small
      introspection: { enabled: false },
      revocation: { enabled: false },
    },
    clientBasedCORS: () => true,
    enabledJWA: { idTokenSigningAlgValues: ['RS256', 'ES256'] },
    ttl: {
      IdToken: () => state.idTokenTtl,
      AccessToken: 3600,
      AuthorizationCode: 120,
      Interaction: 600,
      Session: 3600,
      Grant: 3600,
    },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    async findAccount(ctx, id) {
      const acct = ACCOUNTS[id];
      if (!acct) return undefined;
      return {
        accountId: id,
        async claims() {
          return { sub: id, org: acct.org, name: acct.name };
        },
      };
    },
    // Consent is automatic: a signed-in user's grant always covers openid profile.
    async loadExistingGrant(ctx) {
      const { accountId } = ctx.oidc.session;
      if (!accountId) return undefined;
      const clientId = ctx.oidc.client.clientId;
      const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(clientId);
      let grant = grantId ? await ctx.oidc.provider.Grant.find(grantId) : undefined;
      if (!grant || grant.accountId !== accountId) {
        grant = new ctx.oidc.provider.Grant({ clientId, accountId });
      }
      grant.addOIDCScope('openid profile');
      await grant.save();
      return grant;
    },
  });
  p.Client.prototype.redirectUriAllowed = redirectAllowed;
  for (const ev of ['server_error', 'authorization.error', 'grant.error']) {
    p.on(ev, (ctx, err) => process.stderr.write(`idp ${ev}: ${err?.stack || err}\n`));
  }
  return p;
}

// --------------------------------------------------------- interactions --

function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function loginPage(uid, { error, login = '' } = {}) {
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in - test IdP</title></head>
<body>
<h1>Sign in</h1>
${error ? `<p id="error" role="alert">${esc(error)}</p>` : ''}
<form id="login-form" method="post" action="/interaction/${esc(uid)}/login">
<label>Username <input type="text" name="login" value="${esc(login)}" autocomplete="username" autofocus></label>
<label>Password <input type="password" name="password" autocomplete="current-password"></label>
<button type="submit" id="submit">Sign in</button>
</form>
</body></html>
`;
}

function send(res, status, type, body) {
  res.writeHead(status, { 'Content-Type': type, 'Cache-Control': 'no-store',
    'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

async function readBody(req, limit = 65536) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > limit) throw new Error('body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

async function interaction(req, res, url) {
  const m = url.pathname.match(/^\/interaction\/([A-Za-z0-9_-]+)(\/login)?$/);
  if (!m) return send(res, 404, 'text/plain', 'not found\n');
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (err) {
    return send(res, 400, 'text/plain', `interaction: ${err.message}\n`);
  }
  if (details.uid !== m[1]) return send(res, 400, 'text/plain', 'interaction mismatch\n');
  const { prompt } = details;
  if (prompt.name === 'consent') {
    // Not reached while loadExistingGrant grants everything; kept automatic.
    const grant = details.grantId ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
    if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
    if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
    const grantId = await grant.save();
    return provider.interactionFinished(req, res, { consent: { grantId } },
      { mergeWithLastSubmission: true });
  }
  if (prompt.name !== 'login') return send(res, 400, 'text/plain', `unknown prompt ${prompt.name}\n`);
  if (!m[2]) {
    if (req.method !== 'GET') return send(res, 405, 'text/plain', 'method not allowed\n');
    return send(res, 200, 'text/html; charset=utf-8', loginPage(details.uid));
  }
  if (req.method !== 'POST') return send(res, 405, 'text/plain', 'method not allowed\n');
  const form = new URLSearchParams(await readBody(req));
  const login = form.get('login') || '';
  const acct = Object.hasOwn(ACCOUNTS, login) ? ACCOUNTS[login] : undefined;
  if (!acct || form.get('password') !== acct.password) {
    return send(res, 200, 'text/html; charset=utf-8',
      loginPage(details.uid, { error: 'Invalid username or password.', login }));
  }
  return provider.interactionFinished(req, res, { login: { accountId: login } },
    { mergeWithLastSubmission: false });
}

// ------------------------------------------------------------- servers --

const sockets = new Set();
const app = http.createServer((req, res) => {
  const url = new URL(req.url, issuer);
  state.log.push({ method: req.method, path: url.pathname, query: url.search.slice(1),
    time: Date.now() / 1000 });
  if (url.pathname.startsWith('/interaction/')) {
    interaction(req, res, url).catch((err) => {
      process.stderr.write(`idp interaction: ${err.stack}\n`);
      if (!res.headersSent) send(res, 500, 'text/plain', 'interaction failed\n');
      else res.destroy();
    });
    return;
  }
  handler(req, res);
});
app.keepAliveTimeout = 5000;
app.on('connection', (sock) => {
  if (state.downMode === 'reset') {
    sock.resetAndDestroy();
    return;
  }
  sockets.add(sock);
  sock.on('close', () => sockets.delete(sock));
});

let port;

function listen(srv, p) {
  return new Promise((resolve, reject) => {
    const onError = (err) => reject(err);
    srv.once('error', onError);
    srv.listen(p, '127.0.0.1', () => {
      srv.off('error', onError);
      resolve(srv.address().port);
    });
  });
}

function dropConnections(reset) {
  for (const sock of sockets) {
    if (reset) sock.resetAndDestroy();
    else sock.destroy();
  }
  sockets.clear();
}

async function goDown(mode) {
  if (mode !== 'refuse' && mode !== 'reset') throw new Error('mode must be refuse or reset');
  if (state.up && mode === 'refuse') {
    const closed = new Promise((resolve) => app.close(resolve));
    dropConnections(false);
    await closed;
    state.up = false;
  } else if (!state.up && mode === 'reset') {
    await listen(app, port);
    state.up = true;
  }
  if (mode === 'reset') dropConnections(true);
  state.downMode = mode;
}

async function goUp() {
  state.downMode = null;
  if (!state.up) {
    await listen(app, port);
    state.up = true;
  }
}

function publicState() {
  return {
    issuer,
    port,
    alg: state.alg,
    id_token_ttl: state.idTokenTtl,
    kids: state.keys.map((k) => k.kid),
    up: state.up && state.downMode === null,
    down_mode: state.downMode,
    redirect_uris: state.redirectUris,
    strict_redirects: state.strict,
  };
}

const CONTROLS = {
  ping: async () => ({ ok: true }),
  state: async () => publicState(),
  log: async () => state.log,
  async rotate(body) {
    const fresh = newKeyPair();
    state.keys = body.keep_old ? [...fresh, ...state.keys] : fresh;
    installProvider();
    return { kids: state.keys.map((k) => k.kid) };
  },
  async alg(body) {
    if (!ALGS.has(body.alg)) throw new Error(`alg must be one of ${[...ALGS].join(', ')}`);
    state.alg = body.alg;
    installProvider();
    return { alg: state.alg };
  },
  async id_token_ttl(body) {
    const s = body.seconds;
    if (!Number.isInteger(s) || s < 1) throw new Error('seconds must be an integer >= 1');
    state.idTokenTtl = s;
    return { id_token_ttl: s };
  },
  async down(body) {
    await goDown(body.mode || 'refuse');
    return publicState();
  },
  async up() {
    await goUp();
    return publicState();
  },
  async redirect_uris(body) {
    if (!Array.isArray(body.uris)) throw new Error('uris must be a list');
    for (const u of body.uris) new URL(u);
    state.redirectUris = [...body.uris];
    if (body.strict !== undefined) state.strict = !!body.strict;
    return publicState();
  },
  async reset() {
    await goUp();
    state.keys = INITIAL_KEYS;
    state.alg = 'RS256';
    state.idTokenTtl = DEFAULT_ID_TOKEN_TTL;
    state.redirectUris = [...ARGS.redirectUris];
    state.strict = ARGS.strict;
    installProvider();
    state.log = [];
    return publicState();
  },
};

const ctl = http.createServer(async (req, res) => {
  const json = (status, obj) => send(res, status, 'application/json', `${JSON.stringify(obj)}\n`);
  try {
    const m = new URL(req.url, 'http://127.0.0.1').pathname.match(/^\/_ctl\/([a-z_]+)$/);
    const fn = m && Object.hasOwn(CONTROLS, m[1]) ? CONTROLS[m[1]] : undefined;
    if (!fn) return json(404, { error: 'no such control' });
    const text = req.method === 'POST' ? await readBody(req) : '';
    let body;
    try {
      body = text ? JSON.parse(text) : {};
    } catch {
      return json(400, { error: 'body is not JSON' });
    }
    return json(200, await fn(body || {}));
  } catch (err) {
    return json(err instanceof TypeError || /must|needs/.test(err.message) ? 400 : 500,
      { error: err.message });
  }
});

port = await listen(app, ARGS.port);
state.up = true;
issuer = `http://127.0.0.1:${port}`;
installProvider();
const ctlPort = await listen(ctl, ARGS.ctlPort);
process.stdout.write(`PORT ${port} CTL ${ctlPort}\n`);

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => process.exit(0));
}
