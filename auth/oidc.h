/* oidc.h — OIDC login for private previews (SPEC 4.6, DAYTONA-API.md §6).
 *
 * Three jobs:
 *   - a cache of the issuer's discovery document and JWKS, fetched through
 *     px_http_request (never blocking), single flight, TTL from Cache-Control;
 *   - px_oidc_login(): the 307 to the authorization endpoint with PKCE S256,
 *     Daytona's state encoding and the sealed pkce_verifier cookie;
 *   - px_oidc_callback(): GET /callback, the §6 checks in order, the code
 *     exchange, the access decision (API mode: C3 with the access token;
 *     standalone: the ID token verified against the JWKS and its org claim
 *     compared with the sandbox's org), the auth cookie and the 302.
 * JOSE is libcjose's, JSON libjansson's. Codes, tokens, verifiers and cookie
 * values are never logged. */
#ifndef PX_OIDC_H
#define PX_OIDC_H

#include <time.h>

#include <jansson.h>

#include "proxy/h1.h"
#include "proxy/px.h"

struct px_server;

#define PX_OIDC_COOKIE "pkce_verifier"
#define PX_OIDC_COOKIE_MAX_AGE 300
#define PX_OIDC_TIMEOUT 10 /* seconds per IdP request (discovery, JWKS, token) */
#define PX_OIDC_TTL_MIN 60 /* discovery and JWKS cache lifetime bounds, seconds */
#define PX_OIDC_TTL_MAX 3600
#define PX_OIDC_TTL_DEFAULT 300 /* without a usable Cache-Control max-age */
#define PX_OIDC_JWKS_REFETCH 10 /* an unknown kid refetches the JWKS at most this often */
#define PX_OIDC_MAX_KEYS 16     /* keys kept from one JWKS; the rest are ignored */
#define PX_OIDC_MAX_URL 2048    /* endpoints, returnTo */
#define PX_OIDC_LEEWAY 60       /* seconds of clock skew allowed on exp and nbf */

/* The settings in force, borrowed from the configuration or from C1. */
struct px_oidc_settings {
    const char *issuer, *client_id, *client_secret, *audience, *public_issuer, *org_claim;
};

/* Fills s; returns 1 when OIDC is configured (an issuer and a client ID, and a
 * cookie secret to seal the verifier), else 0. In API mode unset issuer,
 * client ID and audience come from C1 (px_api_info()). */
int px_oidc_settings(const struct px_config *cfg, struct px_oidc_settings *s);

/* Does this request get the login redirect rather than a 401 (LESSONS A3)?
 * GET or HEAD, not a WebSocket upgrade, and a navigation: Sec-Fetch-Mode:
 * navigate, or no Sec-Fetch-Mode and an Accept naming text/html. */
int px_oidc_is_navigation(const struct px_head *req);

/* What the connection answers; everything is borrowed until the callback returns. */
struct px_oidc_answer {
    int status;             /* 307 / 302, or an error status */
    const char *code;       /* static; error code for the error body */
    const char *message;    /* error text, safe to show once escaped; never a secret */
    const char *location;   /* 3xx only */
    const char *set_cookie; /* "Set-Cookie: ...\r\n" lines, or NULL */
};

typedef void (*px_oidc_cb)(void *arg, const struct px_oidc_answer *a);

/* The request, borrowed for the duration of the start call only. */
struct px_oidc_req {
    const struct px_config *cfg;
    const struct px_head *req;
    const char *host;     /* the Host (or authority) as received, lowercased, with any :port */
    struct px_str target; /* path?query as received */
    struct px_str label;  /* login: the preview's host label */
    int https;            /* the external scheme is https */
    const char *client;   /* the client's address (lookup budgets, X-Forwarded-For) */
};

struct px_oidc_op;

/* Start the login redirect / the callback. cb runs exactly once; returns NULL
 * when it already ran, else a handle for px_oidc_cancel (then cb never runs). */
struct px_oidc_op *px_oidc_login(struct px_server *srv, const struct px_oidc_req *in, px_oidc_cb cb,
                                 void *arg);
struct px_oidc_op *px_oidc_callback(struct px_server *srv, const struct px_oidc_req *in,
                                    px_oidc_cb cb, void *arg);
void px_oidc_cancel(struct px_oidc_op *op);

/* Frees the caches and cancels their fetches (at exit). */
void px_oidc_shutdown(void);

/* ---- pure parts, exported for the unit tests ---- */

/* RFC 7636 4.2: unpadded base64url(SHA-256(verifier)) into out (44 bytes). */
int px_oidc_challenge(const char *verifier, char out[44]);

/* §6: padded base64url of {"returnTo","sandboxId","state"}; malloc'd, or NULL. */
char *px_oidc_state_encode(const char *return_to, const char *sandbox_id, const char *inner);

/* Decodes a state (padded or not). Returns 0 and malloc'd strings (each
 * non-empty), or -1. */
int px_oidc_state_decode(struct px_str s, char **return_to, char **sandbox_id, char **inner);

/* May the callback on callback_host (with :port, as received) send the browser
 * to url? Only http(s) URLs whose host is a preview host under the callback's
 * own host, or a configured custom domain; no userinfo, backslashes or
 * controls. Returns 1 or 0. */
int px_oidc_return_safe(const struct px_config *cfg, const char *url, const char *callback_host);

/* The nonce bound to an inner state: unpadded base64url(SHA-256("nonce:" state)). */
int px_oidc_nonce(const char *inner, char out[44]);

/* ID-token claims (OIDC Core 3.1.3.7): iss equals issuer; aud is client_id
 * or an array holding it (then azp, if several, equals client_id); exp in the
 * future and nbf (if any) in the past, each with PX_OIDC_LEEWAY; nonce equals.
 * Returns 0, or -1 with *why (static). */
int px_oidc_check_claims(json_t *claims, const char *issuer, const char *client_id,
                         const char *nonce, time_t now, const char **why);

/* A key set for px_oidc_verify_jwt: kids[i] names keys[i] (cjose_jwk_t *). */
struct px_oidc_keyset {
    void *keys[PX_OIDC_MAX_KEYS];
    char *kids[PX_OIDC_MAX_KEYS]; /* "" for a key without kid */
    int n;
};

/* Parses a JWKS body into ks (RSA and EC P-256 signing keys, at most
 * PX_OIDC_MAX_KEYS). Returns 0, or -1 when it is not a JWKS. */
int px_oidc_jwks_parse(const char *body, size_t len, struct px_oidc_keyset *ks);
void px_oidc_keyset_clear(struct px_oidc_keyset *ks);

/* Verifies a compact JWS: alg RS256 or ES256 (never none or HS*), its kid in
 * ks (a token without kid only with a single key), the key's type matching the
 * alg, the signature. Returns the claims (caller decrefs), or NULL with *why;
 * *unknown_kid is set when only the key was missing. */
json_t *px_oidc_verify_jwt(const char *jwt, size_t len, const struct px_oidc_keyset *ks,
                           const char **why, int *unknown_kid);

/* Cache-Control max-age clamped to the TTL bounds; the default without one. */
int px_oidc_ttl(const struct px_head *resp);

#endif
