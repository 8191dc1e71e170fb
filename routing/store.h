/* store.h — where sandbox records come from.
 *
 * A record names the runner that hosts a sandbox and the facts the auth chain
 * needs. Backends: the in-memory store built from proxy.conf `sandbox` lines
 * (store.c) and, later, Redis. Lookups complete through a callback, which the
 * in-memory backend calls before returning. */
#ifndef PX_STORE_H
#define PX_STORE_H

#include "proxy/px.h"

#define PX_SANDBOX_MAX_PORT_RANGES 32

struct px_sandbox {
    char *id;          /* owned */
    char *runner_url;  /* owned; e.g. http://10.0.0.5:3003 */
    char *runner_key;  /* owned; secret, never logged */
    char *auth_token;  /* owned; secret, never logged; may be NULL */
    char *org;         /* owned; may be NULL */
    char *state;       /* owned; "started" when absent */
    char *signing_key; /* owned; may be NULL */
    int is_public;
    int direct;
    int warning; /* -1 follow the global switch, else 0/1 */
    int wake_http;
    /* Direct mode (SPEC 9): where the sandbox's ports answer, and which may be
     * reached. nports 0 means any port but the runner's own. */
    char *addr; /* owned; host or IP literal without brackets; NULL = the runner's host */
    int nports;
    struct {
        uint16_t lo, hi;
    } ports[PX_SANDBOX_MAX_PORT_RANGES];
    unsigned packed : 1; /* made by px_sandbox_dup(): read-only, one block */
    /* parsed from runner_url */
    int runner_tls;
    char *runner_host; /* owned; host without brackets */
    int runner_port;
    char *runner_authority;  /* owned; "host:port" as written, for the Host header */
    struct px_sandbox *next; /* owned list link */
};

/* Sets one field from "key=value" text. Returns 0 or -1 with a reason in *why. */
int px_sandbox_set(struct px_sandbox *sb, const char *key, const char *val, const char **why);

/* Fills the runner_* fields from runner_url. Returns 0 or -1 with *why set. */
int px_sandbox_finish(struct px_sandbox *sb, const char **why);

/* Direct mode: may a request for port reach the sandbox? Never the runner's
 * own port (its API takes the runner key), and only the listed ports when a
 * `ports` list is set. */
int px_sandbox_direct_port_ok(const struct px_sandbox *sb, unsigned port);

struct px_sandbox *px_sandbox_new(const char *id);
void px_sandbox_free(struct px_sandbox *sb);
struct px_sandbox *px_sandbox_dup(const struct px_sandbox *sb);

/* In-memory lookup in a config's list. Returns a borrowed record or NULL. */
const struct px_sandbox *px_store_find(const struct px_config *cfg, struct px_str id);

#endif
