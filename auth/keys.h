/* keys.h — the Redis schema, spelled once for the proxy (auth/lookup.c,
 * auth/activity.c) and proxyctl (SPEC 5, DAYTONA-API.md; Daytona's Go proxy
 * uses the same names). String literals, so they concatenate with formats:
 * PX_KEY_SANDBOX "%s". */
#ifndef PX_KEYS_H
#define PX_KEYS_H

/* ---- standalone records (written by proxyctl or the operator) ---- */
#define PX_KEY_SANDBOX "sandbox:" /* hash sandbox:{id}; also an invalidation message */
/* string sandbox:signed-preview-url-token:{port}:{token} -> sandbox ID, with a TTL */
#define PX_KEY_SIGNED_TOKEN "sandbox:signed-preview-url-token:"
/* string sandbox:signed-preview-url-revoked:{token}: present = revoked */
#define PX_KEY_SIGNED_REVOKED "sandbox:signed-preview-url-revoked:"
#define PX_KEY_API_KEY "proxy:api-key:"             /* hash {sha256 hex}: org, expires */
#define PX_KEY_CUSTOM_DOMAIN "proxy:custom-domain:" /* hash {host}: sandbox, port */

/* ---- pub/sub ---- */
#define PX_CHANNEL_INVALIDATE "proxy:invalidate" /* a changed key's name, or "*" */
#define PX_CHANNEL_WAKE "proxy:wake"             /* a sandbox ID to start */

/* ---- activity (SPEC 8) ---- */
#define PX_KEY_LAST_ACTIVITY "proxy:last-activity" /* zset: sandbox ID by time */
/* string proxy:sandbox-last-activity-update:{id}: the per-sandbox rate limit */
#define PX_KEY_ACTIVITY_UPDATE "proxy:sandbox-last-activity-update:"

/* ---- API mode's shared cache of Daytona API answers (DAYTONA-API.md) ---- */
#define PX_KEY_API_PUBLIC "proxy:sandbox-public:"
#define PX_KEY_API_ACCESS "proxy:sandbox-auth-key-valid:" /* {label}:{credential} */
#define PX_KEY_API_RUNNER "proxy:sandbox-runner-info:"
#define PX_KEY_API_SIGNING "proxy:sandbox-signing-key:"
#define PX_KEY_API_WARNING "proxy:sandbox-preview-warning:"

#endif
