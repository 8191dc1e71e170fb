/*
 * proxyctl: the admin CLI that writes the standalone Redis records of SPEC.md section 5.
 *
 * Each change is one MULTI/EXEC that ends with a PUBLISH on proxy:invalidate, so no proxy can
 * see a record change without also being told to drop its cached copy (a revoked token must stop
 * working within a second, not when a cache entry happens to expire). Arguments are validated
 * before we connect, so a typo exits 2 without touching Redis.
 *
 * Exit status: 0 success, 1 Redis or lookup failure, 2 bad arguments (usage on stderr).
 * Secrets reach stdout only when the admin asked us to make one: a generated preview token, a
 * signed URL, a new API key, and `sandbox show`.
 */
#include <getopt.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include <hiredis/hiredis.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "auth/keys.h"
#include "auth/digest.h"
#include "auth/fileurl.h"
#include "auth/sentinel_parse.h"

#define CHANNEL PX_CHANNEL_INVALIDATE
#define ID_MAX 128
#define VALUE_MAX 4096
#define HOST_MAX 253
/* A longer lifetime is a typo, not a policy; it also keeps now + expires far from overflow. */
#define EXPIRES_MAX (10L * 365 * 24 * 3600)
/* SPEC 4.5: a revocation marker lives as long as the cookie it defeats. */
#define REVOKED_TTL "3600"
#define TX_MAX_CMDS 4
#define TX_MAX_ARGS 24
#define TX_ATTEMPTS 5

enum ctl_rc {
    CTL_OK = 0,    /* exit 0 */
    CTL_FAIL = 1,  /* Redis error or missing record; exit 1 */
    CTL_USAGE = 2, /* bad arguments; exit 2 after the verb's usage */
    CTL_HELP = 3,  /* --help; usage on stdout, exit 0 */
};

/* One invocation: where Redis is, the connection, and why it failed. */
struct ctl {
    const char *host; /* borrowed from argv/env, or points into hostbuf; NULL with path */
    int port;
    const char *path;     /* borrowed from argv/env; unix socket, or NULL */
    const char *user;     /* borrowed from argv/env; NULL: AUTH with password only */
    const char *password; /* borrowed from argv/env; NULL: no AUTH */
    long db;              /* -1: keep the server's default database */
    /* --sentinel / REDIS_SENTINELS: the primary of master is asked for first */
    struct px_sentinel_addr sentinels[PX_MAX_SENTINELS];
    int nsentinels;
    const char *master;              /* borrowed from argv/env; --master / REDIS_MASTER_NAME */
    struct px_sentinel_addr primary; /* what a sentinel named; host points here */
    redisContext *rc;                /* owned; NULL until ctl_connect() */
    char hostbuf[HOST_MAX + 1];
    char err[512]; /* why the command failed; printed once, by main() */
};

/* Commands queued for one MULTI/EXEC. */
struct tx {
    int n;
    int argc[TX_MAX_CMDS];
    const char *argv[TX_MAX_CMDS][TX_MAX_ARGS]; /* borrowed; must outlive tx_run() */
};

struct verb {
    const char *noun;
    const char *name;
    const char *synopsis; /* arguments after "proxyctl [OPTIONS] noun name" */
    const char *help;     /* what it does; each line indented by four spaces */
    int (*run)(struct ctl *c, int argc, char **argv);
};

static int fail(struct ctl *c, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int fail(struct ctl *c, int rc, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(c->err, sizeof(c->err), fmt, ap);
    va_end(ap);
    return rc;
}

/* ------------------------------------------------------------------ validation -- */

static int valid_id(const char *s)
{
    size_t n = strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-");

    return n > 0 && n <= ID_MAX && s[n] == '\0';
}

/* Tokens and keys travel in headers and query strings, so only visible ASCII, no spaces. */
static int valid_visible(const char *s)
{
    size_t n;

    for (n = 0; s[n] != '\0'; n++)
        if (s[n] < 0x21 || s[n] > 0x7e)
            return 0;
    return n > 0 && n <= VALUE_MAX;
}

/* Decimal without sign or leading zeros, 1..max (SPEC 1 writes ports this way). */
static int parse_posint(const char *s, long max, long *out)
{
    long v = 0;
    size_t i;

    if (s[0] < '1' || s[0] > '9')
        return -1;
    for (i = 0; s[i] != '\0'; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
        if (v > max)
            return -1;
    }
    *out = v;
    return 0;
}

static int parse_port(const char *s, long *out)
{
    return parse_posint(s, 65535, out);
}

/* Lowercases a DNS name into out (HOST_MAX + 1 bytes): letters, digits, '-', non-empty labels
 * of at most 63 bytes. Hosts are matched case-insensitively (SPEC 1), so we store one form. */
static int normalize_host(const char *s, char *out)
{
    size_t i, label = 0;

    for (i = 0; s[i] != '\0'; i++) {
        char ch = s[i];

        if (i >= HOST_MAX)
            return -1;
        if (ch >= 'A' && ch <= 'Z')
            ch = (char)(ch - 'A' + 'a');
        if (ch == '.') {
            if (label == 0)
                return -1;
            label = 0;
        } else if ((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-') {
            if (++label > 63)
                return -1;
        } else {
            return -1;
        }
        out[i] = ch;
    }
    out[i] = '\0';
    return label == 0 ? -1 : 0; /* empty, or a trailing dot */
}

static int check_bool(const char *v)
{
    return strcmp(v, "0") == 0 || strcmp(v, "1") == 0;
}

static int check_wake(const char *v)
{
    return strcmp(v, "none") == 0 || strcmp(v, "http") == 0;
}

static int check_url(const char *v)
{
    return valid_visible(v) && ((strncmp(v, "http://", 7) == 0 && v[7] != '\0') ||
                                (strncmp(v, "https://", 8) == 0 && v[8] != '\0'));
}

/* The fields of a sandbox:{id} hash (SPEC 5), in the order `sandbox show` prints them. */
enum field_index {
    F_RUNNER_URL,
    F_RUNNER_KEY,
    F_PUBLIC,
    F_AUTH_TOKEN,
    F_ORG,
    F_STATE,
    F_WAKE,
    F_SIGNING_KEY,
    F_WARNING,
    F_DIRECT,
    NFIELDS
};

static const struct field {
    const char *name;
    int (*valid)(const char *v);
    const char *expect; /* completes "expected ..." in the error message */
    int secret;         /* never echoed back in an error message */
} fields[NFIELDS] = {
    [F_RUNNER_URL] = {"runner_url", check_url, "an http:// or https:// URL", 0},
    [F_RUNNER_KEY] = {"runner_key", valid_visible, "printable ASCII without spaces", 1},
    [F_PUBLIC] = {"public", check_bool, "0 or 1", 0},
    [F_AUTH_TOKEN] = {"auth_token", valid_visible, "printable ASCII without spaces", 1},
    [F_ORG] = {"org", valid_visible, "printable ASCII without spaces", 0},
    [F_STATE] = {"state", valid_id, "1-128 of [A-Za-z0-9_-]", 0},
    [F_WAKE] = {"wake", check_wake, "none or http", 0},
    [F_SIGNING_KEY] = {"signing_key", valid_visible, "printable ASCII without spaces", 1},
    [F_WARNING] = {"warning", check_bool, "0 or 1", 0},
    [F_DIRECT] = {"direct", check_bool, "0 or 1", 0},
};

/* Returns the index of the field named by name[0..len), or -1. */
static int field_find(const char *name, size_t len)
{
    int i;

    for (i = 0; i < NFIELDS; i++)
        if (strlen(fields[i].name) == len && strncmp(fields[i].name, name, len) == 0)
            return i;
    return -1;
}

static int field_check(struct ctl *c, const struct field *f, const char *v)
{
    if (f->valid(v))
        return CTL_OK;
    if (f->secret)
        return fail(c, CTL_USAGE, "bad %s: expected %s", f->name, f->expect);
    return fail(c, CTL_USAGE, "bad %s '%s': expected %s", f->name, v, f->expect);
}

/* ---------------------------------------------------------------- randomness -- */

static int random_hex(struct ctl *c, char *out, size_t nbytes)
{
    static const char digits[] = "0123456789abcdef";
    unsigned char buf[64];
    size_t i;

    if (nbytes > sizeof(buf) || RAND_bytes(buf, (int)nbytes) != 1)
        return fail(c, CTL_FAIL, "random source failed");
    for (i = 0; i < nbytes; i++) {
        out[2 * i] = digits[buf[i] >> 4];
        out[2 * i + 1] = digits[buf[i] & 15];
    }
    out[2 * nbytes] = '\0';
    OPENSSL_cleanse(buf, sizeof(buf));
    return CTL_OK;
}

/* n characters from [a-z0-9]. Bytes >= 252 are redrawn: 252 = 7 * 36, so the modulo that
 * follows maps each byte value to a symbol with equal weight. */
static int random_alnum(struct ctl *c, char *out, size_t n)
{
    static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789";
    unsigned char buf[32];
    size_t got = 0, i;

    while (got < n) {
        if (RAND_bytes(buf, sizeof(buf)) != 1)
            return fail(c, CTL_FAIL, "random source failed");
        for (i = 0; i < sizeof(buf) && got < n; i++)
            if (buf[i] < 252)
                out[got++] = alphabet[buf[i] % 36];
    }
    out[n] = '\0';
    OPENSSL_cleanse(buf, sizeof(buf));
    return CTL_OK;
}

/* The one way a secret leaves proxyctl: a credential it has just generated, on
 * stdout, for the admin who asked for it (`sandbox add` without --auth-token,
 * `token rotate`, `signed-url create`, `file-url create`, `api-key create`). Never stderr and
 * never an error message, which end up in logs; the proxy itself logs none. */
static void reveal(const char *label, const char *value)
{
    if (label != NULL)
        printf("%s: %s\n", label, value);
    else
        printf("%s\n", value);
}

static int sha256_hex(struct ctl *c, const char *s, char out[65])
{
    return px_sha256_hex(s, strlen(s), out) == 0 ? CTL_OK : fail(c, CTL_FAIL, "sha256 failed");
}

/* --------------------------------------------------------------------- redis -- */

static int connect_redis(struct ctl *c)
{
    struct timeval connect_tv = {5, 0}, io_tv = {10, 0};
    redisReply *r;
    char dbbuf[24];
    const char *argv[3];
    int argc = 0;

    if (c->path != NULL)
        c->rc = redisConnectUnixWithTimeout(c->path, connect_tv);
    else
        c->rc = redisConnectWithTimeout(c->host, c->port, connect_tv);
    if (c->rc == NULL)
        return fail(c, CTL_FAIL, "out of memory");
    if (c->rc->err != 0) {
        if (c->path != NULL)
            return fail(c, CTL_FAIL, "redis %s: %s", c->path, c->rc->errstr);
        return fail(c, CTL_FAIL, "redis %s:%d: %s", c->host, c->port, c->rc->errstr);
    }
    if (redisSetTimeout(c->rc, io_tv) != REDIS_OK)
        return fail(c, CTL_FAIL, "redis: %s", c->rc->errstr);

    if (c->password != NULL) {
        argv[argc++] = "AUTH";
        if (c->user != NULL)
            argv[argc++] = c->user;
        argv[argc++] = c->password;
        r = redisCommandArgv(c->rc, argc, argv, NULL);
        if (r == NULL)
            return fail(c, CTL_FAIL, "redis: %s", c->rc->errstr);
        if (r->type == REDIS_REPLY_ERROR) {
            fail(c, CTL_FAIL, "redis AUTH: %s", r->str);
            freeReplyObject(r);
            return CTL_FAIL;
        }
        freeReplyObject(r);
    }
    if (c->db >= 0) {
        snprintf(dbbuf, sizeof(dbbuf), "%ld", c->db);
        argv[0] = "SELECT";
        argv[1] = dbbuf;
        r = redisCommandArgv(c->rc, 2, argv, NULL);
        if (r == NULL)
            return fail(c, CTL_FAIL, "redis: %s", c->rc->errstr);
        if (r->type == REDIS_REPLY_ERROR) {
            fail(c, CTL_FAIL, "redis SELECT %s: %s", dbbuf, r->str);
            freeReplyObject(r);
            return CTL_FAIL;
        }
        freeReplyObject(r);
    }
    return CTL_OK;
}

/* Asks sentinel i for the primary of c->master; 0 with c->primary set, or -1. */
static int ask_sentinel(struct ctl *c, int i)
{
    const struct px_sentinel_addr *sa = &c->sentinels[i];
    struct timeval connect_tv = {2, 0}, io_tv = {2, 0};
    const char *argv[] = {"SENTINEL", "get-master-addr-by-name", c->master};
    redisContext *sc = redisConnectWithTimeout(sa->ip, sa->port, connect_tv);
    redisReply *r = NULL;
    int rc = -1;

    if (sc == NULL || sc->err != 0 || redisSetTimeout(sc, io_tv) != REDIS_OK) {
        fail(c, CTL_FAIL, "sentinel %s:%d: %s", sa->ip, sa->port, sc ? sc->errstr : "no memory");
    } else if ((r = redisCommandArgv(sc, 3, argv, NULL)) == NULL) {
        fail(c, CTL_FAIL, "sentinel %s:%d: %s", sa->ip, sa->port, sc->errstr);
    } else if (px_sentinel_parse_master(r, &c->primary) != 0) {
        /* hostile or unknown: say so without echoing the bytes */
        fail(c, CTL_FAIL, "sentinel %s:%d: no usable address for master %s", sa->ip, sa->port,
             c->master);
    } else {
        rc = 0;
    }
    if (r != NULL)
        freeReplyObject(r);
    if (sc != NULL)
        redisFree(sc);
    return rc;
}

/* ROLE on the connected node says master (a demoted primary must not be written). */
static int check_role(struct ctl *c)
{
    const char *argv[] = {"ROLE"};
    redisReply *r = redisCommandArgv(c->rc, 1, argv, NULL);
    int ok;

    if (r == NULL)
        return fail(c, CTL_FAIL, "redis %s:%d: %s", c->host, c->port, c->rc->errstr);
    ok = px_sentinel_is_master(r);
    freeReplyObject(r);
    if (!ok)
        return fail(c, CTL_FAIL, "redis %s:%d: not the primary (ROLE)", c->host, c->port);
    return CTL_OK;
}

/* Connects to Redis: directly, or to the primary the sentinels name, asking
 * them in turn until one names a node whose ROLE is master. */
static int ctl_connect(struct ctl *c)
{
    char last[sizeof(c->err)];

    if (c->nsentinels == 0)
        return connect_redis(c);
    for (int i = 0; i < c->nsentinels; i++) {
        if (ask_sentinel(c, i) == 0) {
            c->host = c->primary.ip;
            c->port = c->primary.port;
            c->path = NULL;
            if (connect_redis(c) == CTL_OK && check_role(c) == CTL_OK)
                return CTL_OK;
            if (c->rc != NULL)
                redisFree(c->rc);
            c->rc = NULL;
        }
        snprintf(last, sizeof(last), "%s", c->err);
    }
    return fail(c, CTL_FAIL, "no sentinel named a usable primary for master %s (last: %s)",
                c->master, last);
}

/* Runs one command; NULL-terminated arguments. Returns the reply (caller frees) or NULL with
 * c->err set; an error reply counts as a failure. */
static redisReply *command(struct ctl *c, ...) __attribute__((sentinel));

static redisReply *command(struct ctl *c, ...)
{
    const char *argv[TX_MAX_ARGS];
    const char *a;
    redisReply *r;
    va_list ap;
    int argc = 0;

    va_start(ap, c);
    while ((a = va_arg(ap, const char *)) != NULL && argc < TX_MAX_ARGS)
        argv[argc++] = a;
    va_end(ap);

    r = redisCommandArgv(c->rc, argc, argv, NULL);
    if (r == NULL) {
        fail(c, CTL_FAIL, "redis: %s", c->rc->errstr);
        return NULL;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        fail(c, CTL_FAIL, "redis %s: %s", argv[0], r->str);
        freeReplyObject(r);
        return NULL;
    }
    return r;
}

static void tx_push(struct tx *t, int argc, const char **argv)
{
    /* The verbs below have fixed, small shapes; overflowing is a bug in this file. */
    if (t->n >= TX_MAX_CMDS || argc > TX_MAX_ARGS)
        abort();
    memcpy(t->argv[t->n], argv, (size_t)argc * sizeof(*argv));
    t->argc[t->n++] = argc;
}

/* Queues one command; NULL-terminated arguments. */
static void tx_add(struct tx *t, ...) __attribute__((sentinel));

static void tx_add(struct tx *t, ...)
{
    const char *argv[TX_MAX_ARGS + 1];
    const char *a;
    va_list ap;
    int argc = 0;

    va_start(ap, t);
    while ((a = va_arg(ap, const char *)) != NULL) {
        if (argc == TX_MAX_ARGS)
            abort();
        argv[argc++] = a;
    }
    va_end(ap);
    tx_push(t, argc, argv);
}

/* One MULTI/EXEC round, pipelined. Returns CTL_OK with *out = the EXEC array (caller frees),
 * CTL_FAIL with c->err set, or -1 when a WATCHed key changed and nothing was done. Every reply
 * is read even after an error, so the connection stays in step. */
static int tx_once(struct ctl *c, const struct tx *t, redisReply **out)
{
    const char *multi = "MULTI", *exec = "EXEC";
    redisReply *r;
    int i, rc = CTL_OK;
    size_t k;

    *out = NULL;
    if (redisAppendCommandArgv(c->rc, 1, &multi, NULL) != REDIS_OK)
        return fail(c, CTL_FAIL, "out of memory");
    for (i = 0; i < t->n; i++)
        if (redisAppendCommandArgv(c->rc, t->argc[i], (const char **)t->argv[i], NULL) != REDIS_OK)
            return fail(c, CTL_FAIL, "out of memory");
    if (redisAppendCommandArgv(c->rc, 1, &exec, NULL) != REDIS_OK)
        return fail(c, CTL_FAIL, "out of memory");

    for (i = 0; i < t->n + 2; i++) {
        if (redisGetReply(c->rc, (void **)&r) != REDIS_OK)
            return fail(c, CTL_FAIL, "redis: %s", c->rc->errstr);
        if (i < t->n + 1) {
            /* MULTI's OK and each QUEUED; an error here makes EXEC abort with EXECABORT,
             * but this message says which command was refused. */
            if (r->type == REDIS_REPLY_ERROR && rc == CTL_OK)
                rc =
                    fail(c, CTL_FAIL, "redis %s: %s", i == 0 ? "MULTI" : t->argv[i - 1][0], r->str);
            freeReplyObject(r);
            continue;
        }
        if (r->type == REDIS_REPLY_NIL) {
            freeReplyObject(r);
            return rc == CTL_OK ? -1 : rc;
        }
        if (r->type == REDIS_REPLY_ERROR) {
            if (rc == CTL_OK)
                rc = fail(c, CTL_FAIL, "redis EXEC: %s", r->str);
            freeReplyObject(r);
            return rc;
        }
        if (r->type != REDIS_REPLY_ARRAY || r->elements != (size_t)t->n) {
            freeReplyObject(r);
            return fail(c, CTL_FAIL, "redis EXEC: unexpected reply");
        }
        for (k = 0; k < r->elements; k++) {
            if (r->element[k]->type == REDIS_REPLY_ERROR) {
                fail(c, CTL_FAIL, "redis %s: %s", t->argv[k][0], r->element[k]->str);
                freeReplyObject(r);
                return CTL_FAIL;
            }
        }
        *out = r;
    }
    return rc;
}

/* Runs t atomically. With must_exist set, t runs only if that key exists and is not changed
 * before EXEC (WATCH): rotating a token must not resurrect a sandbox another admin just removed
 * as a hash holding nothing but auth_token. what names the key in the "no such" message.
 * Returns CTL_OK with *out = the EXEC array (caller frees; out may be NULL), else CTL_FAIL. */
static int tx_run(struct ctl *c, const struct tx *t, const char *must_exist, const char *what,
                  redisReply **out)
{
    redisReply *r, *res = NULL;
    int attempt, rc, exists;

    for (attempt = 0; attempt < TX_ATTEMPTS; attempt++) {
        if (must_exist != NULL) {
            if ((r = command(c, "WATCH", must_exist, (char *)NULL)) == NULL)
                return CTL_FAIL;
            freeReplyObject(r);
            if ((r = command(c, "EXISTS", must_exist, (char *)NULL)) == NULL)
                return CTL_FAIL;
            exists = r->type == REDIS_REPLY_INTEGER && r->integer > 0;
            freeReplyObject(r);
            if (!exists) {
                if ((r = command(c, "UNWATCH", (char *)NULL)) != NULL)
                    freeReplyObject(r);
                return fail(c, CTL_FAIL, "no such %s (%s)", what, must_exist);
            }
        }
        rc = tx_once(c, t, &res);
        if (rc == -1)
            continue; /* someone changed the record between EXISTS and EXEC: look again */
        if (rc == CTL_OK && out != NULL)
            *out = res;
        else if (res != NULL)
            freeReplyObject(res);
        return rc;
    }
    return fail(c, CTL_FAIL, "%s kept changing under us; try again", what);
}

/* Runs t and fails with "no such <what>" when its first command (a DEL) removed nothing. */
static int tx_run_delete(struct ctl *c, const struct tx *t, const char *what)
{
    redisReply *res = NULL;
    int rc = tx_run(c, t, NULL, what, &res);

    if (rc != CTL_OK)
        return rc;
    if (res->element[0]->type == REDIS_REPLY_INTEGER && res->element[0]->integer == 0)
        rc = fail(c, CTL_FAIL, "no such %s (%s)", what, t->argv[0][1]);
    freeReplyObject(res);
    return rc;
}

/* ------------------------------------------------------------------- options -- */

#define HELP_OPTION                                                                                \
    {                                                                                              \
        "help", no_argument, NULL, 'h'                                                             \
    }
#define END_OPTION                                                                                 \
    {                                                                                              \
        NULL, 0, NULL, 0                                                                           \
    }
#define SANDBOX_KEY_MAX (sizeof(PX_KEY_SANDBOX) + ID_MAX)

/* Starts a getopt_long scan over a verb's argv (argv[0] is the verb). opterr is off because
 * errors are ours to word and print, once. */
static void opt_reset(void)
{
    optind = 0; /* glibc: 0 also resets the state left by the previous scan */
    opterr = 0;
}

static int opt_error(struct ctl *c, int o, char **argv)
{
    if (o == 'h')
        return CTL_HELP;
    if (o == ':')
        return fail(c, CTL_USAGE, "option '%s' needs a value", argv[optind - 1]);
    return fail(c, CTL_USAGE, "unknown option '%s'", argv[optind - 1]);
}

/* After a scan: between min and max (-1: no limit) positional arguments remain. */
static int want_args(struct ctl *c, int argc, char **argv, int min, int max)
{
    int n = argc - optind;

    if (n < min)
        return fail(c, CTL_USAGE, "missing arguments");
    if (max >= 0 && n > max)
        return fail(c, CTL_USAGE, "unexpected argument '%s'", argv[optind + max]);
    return CTL_OK;
}

/* Option scan for verbs that take only positional arguments (and --help). */
static int plain_args(struct ctl *c, int argc, char **argv, int min, int max)
{
    static const struct option lo[] = {HELP_OPTION, END_OPTION};
    int o;

    opt_reset();
    if ((o = getopt_long(argc, argv, ":h", lo, NULL)) != -1)
        return opt_error(c, o, argv);
    return want_args(c, argc, argv, min, max);
}

static int arg_id(struct ctl *c, const char *s)
{
    if (!valid_id(s))
        return fail(c, CTL_USAGE, "bad sandbox id '%s': expected 1-%d of [A-Za-z0-9_-]", s, ID_MAX);
    return CTL_OK;
}

static int arg_port(struct ctl *c, const char *what, const char *s, long *port)
{
    if (parse_port(s, port) != 0)
        return fail(c, CTL_USAGE, "bad %s '%s': expected 1-65535 without leading zeros", what, s);
    return CTL_OK;
}

static int arg_expires(struct ctl *c, const char *s, long *secs)
{
    if (parse_posint(s, EXPIRES_MAX, secs) != 0)
        return fail(c, CTL_USAGE, "bad --expires '%s': expected seconds, 1-%ld", s, EXPIRES_MAX);
    return CTL_OK;
}

/* Signed preview tokens sit in a host label (SPEC 1), so no dots; the Daytona API may issue
 * other alphabets than ours, hence the id rule rather than [a-z0-9]{16}. */
static int arg_token(struct ctl *c, const char *s)
{
    if (!valid_id(s))
        return fail(c, CTL_USAGE, "bad token: expected 1-%d of [A-Za-z0-9_-]", ID_MAX);
    return CTL_OK;
}

static int arg_host(struct ctl *c, const char *what, const char *s, char *out)
{
    if (normalize_host(s, out) != 0)
        return fail(c, CTL_USAGE, "bad %s '%s': expected a DNS name", what, s);
    return CTL_OK;
}

/* --------------------------------------------------------------------- verbs -- */

static int sandbox_add(struct ctl *c, int argc, char **argv)
{
    /* An option's val is OPT_FIELD + the field it writes; flags write "1". */
    enum { OPT_FIELD = 256 };
    static const struct option lo[] = {
        {"runner-url", required_argument, NULL, OPT_FIELD + F_RUNNER_URL},
        {"runner-key", required_argument, NULL, OPT_FIELD + F_RUNNER_KEY},
        {"public", no_argument, NULL, OPT_FIELD + F_PUBLIC},
        {"auth-token", required_argument, NULL, OPT_FIELD + F_AUTH_TOKEN},
        {"org", required_argument, NULL, OPT_FIELD + F_ORG},
        {"state", required_argument, NULL, OPT_FIELD + F_STATE},
        {"wake", required_argument, NULL, OPT_FIELD + F_WAKE},
        {"direct", no_argument, NULL, OPT_FIELD + F_DIRECT},
        {"warning", required_argument, NULL, OPT_FIELD + F_WARNING},
        {"signing-key", required_argument, NULL, OPT_FIELD + F_SIGNING_KEY},
        HELP_OPTION,
        END_OPTION,
    };
    const char *val[NFIELDS] = {0}; /* borrowed from argv, or token; NULL: not written */
    const char *hset[2 + 2 * NFIELDS];
    char key[SANDBOX_KEY_MAX], token[33];
    struct tx t = {0};
    int o, li, rc, i, hn = 0, generated = 0;

    /* public and direct are always written, so re-adding without the flag clears them. */
    val[F_PUBLIC] = "0";
    val[F_DIRECT] = "0";
    opt_reset();
    while ((o = getopt_long(argc, argv, ":h", lo, &li)) != -1) {
        if (o < OPT_FIELD)
            return opt_error(c, o, argv);
        val[o - OPT_FIELD] = lo[li].has_arg ? optarg : "1";
    }
    if ((rc = want_args(c, argc, argv, 1, 1)) != CTL_OK || (rc = arg_id(c, argv[optind])) != CTL_OK)
        return rc;
    if (val[F_RUNNER_URL] == NULL)
        return fail(c, CTL_USAGE, "--runner-url is required");
    if (val[F_RUNNER_KEY] == NULL)
        return fail(c, CTL_USAGE, "--runner-key is required");
    for (i = 0; i < NFIELDS; i++)
        if (val[i] != NULL && (rc = field_check(c, &fields[i], val[i])) != CTL_OK)
            return rc;
    if (val[F_AUTH_TOKEN] == NULL) {
        if ((rc = random_hex(c, token, 16)) != CTL_OK)
            return rc;
        val[F_AUTH_TOKEN] = token;
        generated = 1;
    }

    snprintf(key, sizeof(key), PX_KEY_SANDBOX "%s",
             argv[optind]); /* also the invalidation message */
    hset[hn++] = "HSET";
    hset[hn++] = key;
    for (i = 0; i < NFIELDS; i++) {
        if (val[i] != NULL) {
            hset[hn++] = fields[i].name;
            hset[hn++] = val[i];
        }
    }
    /* Replace, not merge: fields of an earlier record (an old signing key, an org) must not
     * survive into the new one. */
    tx_add(&t, "DEL", key, (char *)NULL);
    tx_push(&t, hn, hset);
    tx_add(&t, "PUBLISH", CHANNEL, key, (char *)NULL);
    if ((rc = ctl_connect(c)) != CTL_OK || (rc = tx_run(c, &t, NULL, "sandbox", NULL)) != CTL_OK)
        return rc;
    if (generated)
        reveal("auth_token", token);
    return CTL_OK;
}

static int sandbox_set(struct ctl *c, int argc, char **argv)
{
    const char *val[NFIELDS] = {0}; /* borrowed from argv; last assignment of a field wins */
    const char *hset[2 + 2 * NFIELDS];
    char key[SANDBOX_KEY_MAX];
    struct tx t = {0};
    int rc, i, f, hn = 0;

    if ((rc = plain_args(c, argc, argv, 2, -1)) != CTL_OK ||
        (rc = arg_id(c, argv[optind])) != CTL_OK)
        return rc;
    for (i = optind + 1; i < argc; i++) {
        const char *eq = strchr(argv[i], '=');

        if (eq == NULL)
            return fail(c, CTL_USAGE, "expected FIELD=VALUE, got '%s'", argv[i]);
        if ((f = field_find(argv[i], (size_t)(eq - argv[i]))) < 0)
            return fail(c, CTL_USAGE, "unknown field '%.*s'", (int)(eq - argv[i]), argv[i]);
        if ((rc = field_check(c, &fields[f], eq + 1)) != CTL_OK)
            return rc;
        val[f] = eq + 1;
    }

    snprintf(key, sizeof(key), PX_KEY_SANDBOX "%s", argv[optind]);
    hset[hn++] = "HSET";
    hset[hn++] = key;
    for (i = 0; i < NFIELDS; i++) {
        if (val[i] != NULL) {
            hset[hn++] = fields[i].name;
            hset[hn++] = val[i];
        }
    }
    tx_push(&t, hn, hset);
    tx_add(&t, "PUBLISH", CHANNEL, key, (char *)NULL);
    /* Setting fields of a missing sandbox would create a record without a runner. */
    if ((rc = ctl_connect(c)) != CTL_OK)
        return rc;
    return tx_run(c, &t, key, "sandbox", NULL);
}

static int sandbox_rm(struct ctl *c, int argc, char **argv)
{
    char key[SANDBOX_KEY_MAX];
    struct tx t = {0};
    int rc;

    if ((rc = plain_args(c, argc, argv, 1, 1)) != CTL_OK ||
        (rc = arg_id(c, argv[optind])) != CTL_OK)
        return rc;
    snprintf(key, sizeof(key), PX_KEY_SANDBOX "%s", argv[optind]);
    tx_add(&t, "DEL", key, (char *)NULL);
    tx_add(&t, "PUBLISH", CHANNEL, key, (char *)NULL);
    if ((rc = ctl_connect(c)) != CTL_OK)
        return rc;
    return tx_run_delete(c, &t, "sandbox");
}

static int sandbox_show(struct ctl *c, int argc, char **argv)
{
    char key[SANDBOX_KEY_MAX];
    redisReply *r;
    size_t k;
    int rc, i;

    if ((rc = plain_args(c, argc, argv, 1, 1)) != CTL_OK ||
        (rc = arg_id(c, argv[optind])) != CTL_OK)
        return rc;
    snprintf(key, sizeof(key), PX_KEY_SANDBOX "%s", argv[optind]);
    if ((rc = ctl_connect(c)) != CTL_OK)
        return rc;
    if ((r = command(c, "HGETALL", key, (char *)NULL)) == NULL)
        return CTL_FAIL;
    if (r->type != REDIS_REPLY_ARRAY || r->elements == 0) {
        freeReplyObject(r);
        return fail(c, CTL_FAIL, "no such sandbox (%s)", key);
    }
    /* Known fields in a fixed order so output diffs cleanly, then whatever else is there. */
    for (i = 0; i <= NFIELDS; i++) {
        for (k = 0; k + 1 < r->elements; k += 2) {
            const redisReply *name = r->element[k], *value = r->element[k + 1];
            int known = field_find(name->str, name->len);

            if ((i < NFIELDS && known == i) || (i == NFIELDS && known < 0))
                printf("%.*s: %.*s\n", (int)name->len, name->str, (int)value->len, value->str);
        }
    }
    freeReplyObject(r);
    return CTL_OK;
}

static int token_rotate(struct ctl *c, int argc, char **argv)
{
    char key[SANDBOX_KEY_MAX], token[33];
    struct tx t = {0};
    int rc;

    if ((rc = plain_args(c, argc, argv, 1, 1)) != CTL_OK ||
        (rc = arg_id(c, argv[optind])) != CTL_OK)
        return rc;
    if ((rc = random_hex(c, token, 16)) != CTL_OK)
        return rc;
    snprintf(key, sizeof(key), PX_KEY_SANDBOX "%s", argv[optind]);
    tx_add(&t, "HSET", key, fields[F_AUTH_TOKEN].name, token, (char *)NULL);
    tx_add(&t, "PUBLISH", CHANNEL, key, (char *)NULL);
    if ((rc = ctl_connect(c)) != CTL_OK || (rc = tx_run(c, &t, key, "sandbox", NULL)) != CTL_OK)
        return rc;
    reveal("auth_token", token);
    return CTL_OK;
}

static int signed_url_create(struct ctl *c, int argc, char **argv)
{
    static const struct option lo[] = {
        {"expires", required_argument, NULL, 'e'},
        {"domain", required_argument, NULL, 'D'},
        {"scheme", required_argument, NULL, 's'},
        {"listen-port", required_argument, NULL, 'l'},
        HELP_OPTION,
        END_OPTION,
    };
    const char *expires_arg = NULL, *domain_arg = "proxy.localhost", *scheme = "http";
    const char *listen_arg = NULL;
    char key[SANDBOX_KEY_MAX], domain[HOST_MAX + 1], token[17], secs[24], suffix[8] = "";
    char tkey[sizeof(PX_KEY_SIGNED_TOKEN "65535:") + 16];
    char msg[sizeof("token:65535:") + 16];
    struct tx t = {0};
    long port = 0, expires = 0, listen = 0;
    int o, rc;

    opt_reset();
    while ((o = getopt_long(argc, argv, ":h", lo, NULL)) != -1) {
        switch (o) {
        case 'e': expires_arg = optarg; break;
        case 'D': domain_arg = optarg; break;
        case 's': scheme = optarg; break;
        case 'l': listen_arg = optarg; break;
        default: return opt_error(c, o, argv);
        }
    }
    if ((rc = want_args(c, argc, argv, 2, 2)) != CTL_OK ||
        (rc = arg_id(c, argv[optind])) != CTL_OK ||
        (rc = arg_port(c, "port", argv[optind + 1], &port)) != CTL_OK)
        return rc;
    if (expires_arg == NULL)
        return fail(c, CTL_USAGE, "--expires is required");
    if ((rc = arg_expires(c, expires_arg, &expires)) != CTL_OK ||
        (rc = arg_host(c, "--domain", domain_arg, domain)) != CTL_OK)
        return rc;
    if (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0)
        return fail(c, CTL_USAGE, "bad --scheme '%s': expected http or https", scheme);
    if (listen_arg != NULL) {
        if ((rc = arg_port(c, "--listen-port", listen_arg, &listen)) != CTL_OK)
            return rc;
        snprintf(suffix, sizeof(suffix), ":%ld", listen);
    }
    if ((rc = random_alnum(c, token, 16)) != CTL_OK)
        return rc;

    snprintf(key, sizeof(key), PX_KEY_SANDBOX "%s", argv[optind]);
    snprintf(tkey, sizeof(tkey), PX_KEY_SIGNED_TOKEN "%ld:%s", port, token);
    snprintf(msg, sizeof(msg), "token:%ld:%s", port, token);
    snprintf(secs, sizeof(secs), "%ld", expires);
    /* The key's TTL is the URL's expiry (SPEC 4.5 [compat]). The message drops a cached
     * "invalid" answer for this label that a too-early request may have left behind. */
    tx_add(&t, "SET", tkey, argv[optind], "EX", secs, (char *)NULL);
    tx_add(&t, "PUBLISH", CHANNEL, msg, (char *)NULL);
    if ((rc = ctl_connect(c)) != CTL_OK || (rc = tx_run(c, &t, key, "sandbox", NULL)) != CTL_OK)
        return rc;
    char url[sizeof("https://65535-.") + sizeof(token) + sizeof(domain) + sizeof(suffix)];
    snprintf(url, sizeof(url), "%s://%ld-%s.%s%s/", scheme, port, token, domain, suffix);
    reveal("url", url);
    reveal("token", token);
    return CTL_OK;
}

/* SPEC 4.7: a link to one file of sandbox ID, signed with its signing_key. The URL names the base
 * host (--domain, --scheme, --listen-port as for signed-url create): the toolbox route lives there.
 */
static int file_url_create(struct ctl *c, int argc, char **argv)
{
    static const struct option lo[] = {
        {"method", required_argument, NULL, 'm'},
        {"expires", required_argument, NULL, 'e'},
        {"domain", required_argument, NULL, 'D'},
        {"scheme", required_argument, NULL, 's'},
        {"listen-port", required_argument, NULL, 'l'},
        HELP_OPTION,
        END_OPTION,
    };
    static const char unreserved[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                     "0123456789-._~/";
    const char *method = "GET", *expires_arg = NULL, *domain_arg = "proxy.localhost";
    const char *scheme = "http", *listen_arg = NULL, *id, *path;
    char key[SANDBOX_KEY_MAX], domain[HOST_MAX + 1], suffix[8] = "", when[24];
    char sig[PX_FILEURL_SIG_MAX];
    long expires = 0, listen = 0;
    redisReply *r;
    int o, rc;

    opt_reset();
    while ((o = getopt_long(argc, argv, ":h", lo, NULL)) != -1) {
        switch (o) {
        case 'm': method = optarg; break;
        case 'e': expires_arg = optarg; break;
        case 'D': domain_arg = optarg; break;
        case 's': scheme = optarg; break;
        case 'l': listen_arg = optarg; break;
        default: return opt_error(c, o, argv);
        }
    }
    if ((rc = want_args(c, argc, argv, 2, 2)) != CTL_OK || (rc = arg_id(c, argv[optind])) != CTL_OK)
        return rc;
    id = argv[optind];
    path = argv[optind + 1];
    if (path[0] == '\0' || strlen(path) > VALUE_MAX)
        return fail(c, CTL_USAGE, "bad PATH: expected 1-%d bytes", VALUE_MAX);
    if (strcmp(method, "GET") != 0 && strcmp(method, "POST") != 0)
        return fail(c, CTL_USAGE,
                    "bad --method '%s': expected GET (download, HEAD too) or POST "
                    "(upload)",
                    method);
    if (expires_arg == NULL)
        return fail(c, CTL_USAGE, "--expires is required (0: the link never expires)");
    if (strcmp(expires_arg, "0") != 0 && (rc = arg_expires(c, expires_arg, &expires)) != CTL_OK)
        return rc;
    if ((rc = arg_host(c, "--domain", domain_arg, domain)) != CTL_OK)
        return rc;
    if (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0)
        return fail(c, CTL_USAGE, "bad --scheme '%s': expected http or https", scheme);
    if (listen_arg != NULL) {
        if ((rc = arg_port(c, "--listen-port", listen_arg, &listen)) != CTL_OK)
            return rc;
        snprintf(suffix, sizeof(suffix), ":%ld", listen);
    }

    snprintf(key, sizeof(key), PX_KEY_SANDBOX "%s", id);
    if ((rc = ctl_connect(c)) != CTL_OK)
        return rc;
    if ((r = command(c, "HGET", key, "signing_key", (char *)NULL)) == NULL)
        return CTL_FAIL;
    if (r->type != REDIS_REPLY_STRING || r->len == 0) {
        freeReplyObject(r);
        if ((r = command(c, "EXISTS", key, (char *)NULL)) == NULL)
            return CTL_FAIL;
        rc = r->type == REDIS_REPLY_INTEGER && r->integer > 0;
        freeReplyObject(r);
        return rc ? fail(c, CTL_FAIL,
                         "sandbox %s has no signing_key (proxyctl signing-key "
                         "rotate %s makes one)",
                         id, id)
                  : fail(c, CTL_FAIL, "no such sandbox (%s)", key);
    }
    snprintf(when, sizeof(when), "%ld", expires == 0 ? 0L : (long)time(NULL) + expires);
    size_t n = px_fileurl_sign(px_str_make(r->str, r->len), method, px_str_make(path, strlen(path)),
                               px_str_make(when, strlen(when)), sig);
    OPENSSL_cleanse(r->str, r->len);
    freeReplyObject(r);
    if (n == 0)
        return fail(c, CTL_FAIL, "signing failed");

    /* path as a query value: everything but unreserved characters and '/' escaped */
    size_t plen = strlen(path), cap = strlen(scheme) + strlen(domain) + strlen(id) + 3 * plen + 200;
    char *url = malloc(cap), *u;
    if (url == NULL)
        return fail(c, CTL_FAIL, "out of memory");
    u = url + snprintf(url, cap, "%s://%s%s/toolbox/%s/files/%s?path=", scheme, domain, suffix, id,
                       strcmp(method, "GET") == 0 ? "download" : "upload-v2");
    for (size_t i = 0; i < plen; i++) {
        unsigned char ch = (unsigned char)path[i];
        if (ch != '\0' && strchr(unreserved, ch) != NULL)
            *u++ = (char)ch;
        else
            u += sprintf(u, "%%%02X", ch);
    }
    snprintf(u, cap - (size_t)(u - url), "&expires=%s&signature=%s", when, sig);
    reveal("url", url);
    reveal("expires", when);
    free(url);
    return CTL_OK;
}

/* A new random signing key for sandbox ID: every file URL signed with the old one stops working
 * at once (the record change is published like any other). */
static int signing_key_rotate(struct ctl *c, int argc, char **argv)
{
    char key[SANDBOX_KEY_MAX], skey[33];
    struct tx t = {0};
    int rc;

    if ((rc = plain_args(c, argc, argv, 1, 1)) != CTL_OK ||
        (rc = arg_id(c, argv[optind])) != CTL_OK)
        return rc;
    if ((rc = random_alnum(c, skey, 32)) != CTL_OK)
        return rc;
    snprintf(key, sizeof(key), PX_KEY_SANDBOX "%s", argv[optind]);
    tx_add(&t, "HSET", key, fields[F_SIGNING_KEY].name, skey, (char *)NULL);
    tx_add(&t, "PUBLISH", CHANNEL, key, (char *)NULL);
    if ((rc = ctl_connect(c)) == CTL_OK)
        rc = tx_run(c, &t, key, "sandbox", NULL);
    OPENSSL_cleanse(skey, sizeof(skey));
    return rc;
}

static int signed_url_revoke(struct ctl *c, int argc, char **argv)
{
    char tkey[sizeof(PX_KEY_SIGNED_TOKEN "65535:") + ID_MAX];
    char rkey[sizeof(PX_KEY_SIGNED_REVOKED) + ID_MAX];
    char msg[sizeof("token:65535:") + ID_MAX];
    const char *token;
    struct tx t = {0};
    long port;
    int rc;

    if ((rc = plain_args(c, argc, argv, 2, 2)) != CTL_OK ||
        (rc = arg_port(c, "port", argv[optind], &port)) != CTL_OK ||
        (rc = arg_token(c, argv[optind + 1])) != CTL_OK)
        return rc;
    token = argv[optind + 1];
    snprintf(tkey, sizeof(tkey), PX_KEY_SIGNED_TOKEN "%ld:%s", port, token);
    snprintf(rkey, sizeof(rkey), PX_KEY_SIGNED_REVOKED "%s", token);
    snprintf(msg, sizeof(msg), "token:%ld:%s", port, token);
    /* Succeeds even when the token key is already gone: cookies minted from the token outlive
     * it by up to an hour, and the marker is what stops them (SPEC 4.5). */
    tx_add(&t, "DEL", tkey, (char *)NULL);
    tx_add(&t, "SET", rkey, "1", "EX", REVOKED_TTL, (char *)NULL);
    tx_add(&t, "PUBLISH", CHANNEL, msg, (char *)NULL);
    if ((rc = ctl_connect(c)) != CTL_OK)
        return rc;
    return tx_run(c, &t, NULL, "token", NULL);
}

static int api_key_create(struct ctl *c, int argc, char **argv)
{
    static const struct option lo[] = {
        {"org", required_argument, NULL, 'o'},
        {"expires", required_argument, NULL, 'e'},
        HELP_OPTION,
        END_OPTION,
    };
    const char *org = NULL, *expires_arg = NULL;
    char apikey[4 + 40 + 1] = "pxk_", hash[65], key[sizeof(PX_KEY_API_KEY) + 64];
    char at[24], secs[24];
    struct tx t = {0};
    long expires = 0;
    int o, rc;

    opt_reset();
    while ((o = getopt_long(argc, argv, ":h", lo, NULL)) != -1) {
        switch (o) {
        case 'o': org = optarg; break;
        case 'e': expires_arg = optarg; break;
        default: return opt_error(c, o, argv);
        }
    }
    if ((rc = want_args(c, argc, argv, 0, 0)) != CTL_OK)
        return rc;
    if (org == NULL)
        return fail(c, CTL_USAGE, "--org is required");
    if ((rc = field_check(c, &fields[F_ORG], org)) != CTL_OK)
        return rc;
    if (expires_arg != NULL && (rc = arg_expires(c, expires_arg, &expires)) != CTL_OK)
        return rc;
    if ((rc = random_hex(c, apikey + 4, 20)) != CTL_OK ||
        (rc = sha256_hex(c, apikey, hash)) != CTL_OK)
        return rc;

    /* Only the hash is stored: a Redis dump must not hand out working keys (SPEC 4.1). */
    snprintf(key, sizeof(key), PX_KEY_API_KEY "%s", hash);
    if (expires_arg != NULL) {
        /* The record says when the key stops working; the TTL only tidies up after it. */
        snprintf(at, sizeof(at), "%lld", (long long)time(NULL) + expires);
        snprintf(secs, sizeof(secs), "%ld", expires);
        tx_add(&t, "HSET", key, "org", org, "expires", at, (char *)NULL);
        tx_add(&t, "EXPIRE", key, secs, (char *)NULL);
    } else {
        tx_add(&t, "HSET", key, "org", org, (char *)NULL);
    }
    /* No message names an API key, so drop everything: a cached "invalid" for this key would
     * otherwise refuse it for a few seconds. */
    tx_add(&t, "PUBLISH", CHANNEL, "*", (char *)NULL);
    if ((rc = ctl_connect(c)) != CTL_OK || (rc = tx_run(c, &t, NULL, "api key", NULL)) != CTL_OK)
        return rc;
    reveal(NULL, apikey);
    OPENSSL_cleanse(apikey, sizeof(apikey));
    return CTL_OK;
}

static int api_key_rm(struct ctl *c, int argc, char **argv)
{
    char hash[65], key[sizeof(PX_KEY_API_KEY) + 64];
    struct tx t = {0};
    int rc;

    if ((rc = plain_args(c, argc, argv, 1, 1)) != CTL_OK)
        return rc;
    if (!valid_visible(argv[optind]))
        return fail(c, CTL_USAGE, "bad api key: expected printable ASCII without spaces");
    if ((rc = sha256_hex(c, argv[optind], hash)) != CTL_OK)
        return rc;
    snprintf(key, sizeof(key), PX_KEY_API_KEY "%s", hash);
    tx_add(&t, "DEL", key, (char *)NULL);
    tx_add(&t, "PUBLISH", CHANNEL, "*", (char *)NULL); /* cached "valid" answers must go at once */
    if ((rc = ctl_connect(c)) != CTL_OK)
        return rc;
    return tx_run_delete(c, &t, "api key");
}

static int domain_add(struct ctl *c, int argc, char **argv)
{
    char host[HOST_MAX + 1], key[sizeof(PX_KEY_CUSTOM_DOMAIN) + HOST_MAX];
    char msg[sizeof("domain:") + HOST_MAX], portbuf[8];
    struct tx t = {0};
    long port;
    int rc;

    if ((rc = plain_args(c, argc, argv, 3, 3)) != CTL_OK ||
        (rc = arg_host(c, "host", argv[optind], host)) != CTL_OK ||
        (rc = arg_id(c, argv[optind + 1])) != CTL_OK ||
        (rc = arg_port(c, "port", argv[optind + 2], &port)) != CTL_OK)
        return rc;
    snprintf(key, sizeof(key), PX_KEY_CUSTOM_DOMAIN "%s", host);
    snprintf(msg, sizeof(msg), "domain:%s", host);
    snprintf(portbuf, sizeof(portbuf), "%ld", port);
    /* The sandbox need not exist yet: DNS for a custom domain is often set up first. */
    tx_add(&t, "HSET", key, "sandbox", argv[optind + 1], "port", portbuf, (char *)NULL);
    tx_add(&t, "PUBLISH", CHANNEL, msg, (char *)NULL);
    if ((rc = ctl_connect(c)) != CTL_OK)
        return rc;
    return tx_run(c, &t, NULL, "domain", NULL);
}

static int domain_rm(struct ctl *c, int argc, char **argv)
{
    char host[HOST_MAX + 1], key[sizeof(PX_KEY_CUSTOM_DOMAIN) + HOST_MAX];
    char msg[sizeof("domain:") + HOST_MAX];
    struct tx t = {0};
    int rc;

    if ((rc = plain_args(c, argc, argv, 1, 1)) != CTL_OK ||
        (rc = arg_host(c, "host", argv[optind], host)) != CTL_OK)
        return rc;
    snprintf(key, sizeof(key), PX_KEY_CUSTOM_DOMAIN "%s", host);
    snprintf(msg, sizeof(msg), "domain:%s", host);
    tx_add(&t, "DEL", key, (char *)NULL);
    tx_add(&t, "PUBLISH", CHANNEL, msg, (char *)NULL);
    if ((rc = ctl_connect(c)) != CTL_OK)
        return rc;
    return tx_run_delete(c, &t, "domain");
}

static int invalidate_all(struct ctl *c, int argc, char **argv)
{
    redisReply *r;
    int rc;

    if ((rc = plain_args(c, argc, argv, 0, 0)) != CTL_OK || (rc = ctl_connect(c)) != CTL_OK)
        return rc;
    if ((r = command(c, "PUBLISH", CHANNEL, "*", (char *)NULL)) == NULL)
        return CTL_FAIL;
    freeReplyObject(r);
    return CTL_OK;
}

/* ---------------------------------------------------------------------- main -- */

static const struct verb verbs[] = {
    {"sandbox", "add",
     "ID --runner-url URL --runner-key KEY [--public]\n"
     "        [--auth-token T] [--org O] [--state S] [--wake none|http] [--direct]\n"
     "        [--warning 0|1] [--signing-key K]",
     "    Write sandbox:ID, replacing any earlier record. public and direct are always written\n"
     "    (0 unless given). Without --auth-token a random preview token is generated and\n"
     "    printed as \"auth_token: T\".\n",
     sandbox_add},
    {"sandbox", "set", "ID FIELD=VALUE...",
     "    Change fields of an existing sandbox:ID. FIELD is one of runner_url, runner_key,\n"
     "    public, auth_token, org, state, wake, signing_key, warning, direct.\n",
     sandbox_set},
    {"sandbox", "rm", "ID", "    Delete sandbox:ID.\n", sandbox_rm},
    {"sandbox", "show", "ID", "    Print the fields of sandbox:ID (secrets included).\n",
     sandbox_show},
    {"token", "rotate", "ID",
     "    Give sandbox ID a new random preview token and print it as \"auth_token: T\".\n",
     token_rotate},
    {"signed-url", "create",
     "ID PORT --expires SECONDS [--domain D]\n"
     "        [--scheme http|https] [--listen-port N]",
     "    Issue a signed preview URL for PORT of sandbox ID, valid for SECONDS. Prints\n"
     "    \"url: SCHEME://PORT-TOKEN.DOMAIN[:N]/\" and \"token: TOKEN\".\n"
     "    Defaults: --domain proxy.localhost, --scheme http, no port in the URL.\n",
     signed_url_create},
    {"signed-url", "revoke", "PORT TOKEN",
     "    Revoke a signed preview URL, including auth cookies minted from it.\n",
     signed_url_revoke},
    {"file-url", "create",
     "ID PATH --expires SECONDS|0 [--method GET|POST]\n"
     "        [--domain D] [--scheme http|https] [--listen-port N]",
     "    Issue a signed file URL (SPEC 4.7) for PATH in sandbox ID, signed with its signing_key\n"
     "    and valid for SECONDS (0: forever). GET (the default) makes a download link (HEAD\n"
     "    works too), POST an upload link. Prints \"url: SCHEME://DOMAIN[:N]/toolbox/ID/files/\n"
     "    download?path=...&expires=...&signature=...\" (upload-v2 for POST) and \"expires: T\"\n"
     "    (unix time, 0 for never). The domain is the proxy's base host. Defaults: --domain\n"
     "    proxy.localhost, --scheme http, no port in the URL.\n",
     file_url_create},
    {"signing-key", "rotate", "ID",
     "    Give sandbox ID a new random signing key: file URLs signed with the old one stop\n"
     "    working.\n",
     signing_key_rotate},
    {"api-key", "create", "--org O [--expires SECONDS]",
     "    Create an API key for org O (valid for SECONDS, or forever) and print it. Only\n"
     "    its SHA-256 is stored, so this is the one chance to copy it.\n",
     api_key_create},
    {"api-key", "rm", "KEY", "    Delete an API key, given the key itself.\n", api_key_rm},
    {"domain", "add", "HOST SANDBOX_ID PORT",
     "    Route the custom domain HOST to PORT of sandbox SANDBOX_ID.\n", domain_add},
    {"domain", "rm", "HOST", "    Remove the custom domain HOST.\n", domain_rm},
    {"invalidate", "all", "", "    Tell every proxy to drop all cached records.\n", invalidate_all},
};
#define NVERBS (sizeof(verbs) / sizeof(verbs[0]))

static const char global_usage[] =
    "Options:\n"
    "    --redis IP:PORT | --redis /path.sock   (default $REDIS_HOST:$REDIS_PORT, else\n"
    "                                            127.0.0.1:6379)\n"
    "    --password P     (default $REDIS_PASSWORD)\n"
    "    --user U         (default $REDIS_USERNAME)\n"
    "    --db N           (SELECT N after connecting)\n"
    "    --sentinel IP:PORT[,IP:PORT...] --master NAME\n"
    "                     find the primary through Redis Sentinel (default\n"
    "                     $REDIS_SENTINELS and $REDIS_MASTER_NAME; not with --redis)\n"
    "Exit status: 0 done, 1 Redis error or no such record, 2 bad arguments.\n";

static void verb_usage(FILE *f, const struct verb *v)
{
    fprintf(f, "usage: proxyctl [OPTIONS] %s %s%s%s\n%s", v->noun, v->name,
            v->synopsis[0] != '\0' ? " " : "", v->synopsis, v->help);
}

/* Every verb, or those of one noun. */
static void usage(FILE *f, const char *noun)
{
    size_t i;

    fprintf(f, "usage: proxyctl [OPTIONS] %s VERB ...\n", noun != NULL ? noun : "NOUN");
    for (i = 0; i < NVERBS; i++)
        if (noun == NULL || strcmp(verbs[i].noun, noun) == 0)
            fprintf(f, "    proxyctl %s %s%s%s\n", verbs[i].noun, verbs[i].name,
                    verbs[i].synopsis[0] != '\0' ? " " : "", verbs[i].synopsis);
    fprintf(f, "%s\"proxyctl NOUN VERB --help\" describes one command.\n", global_usage);
}

static int noun_known(const char *noun)
{
    size_t i;

    for (i = 0; i < NVERBS; i++)
        if (strcmp(verbs[i].noun, noun) == 0)
            return 1;
    return 0;
}

/* --redis: a path when it starts with '/', else IP:PORT ([v6]:PORT for IPv6). */
static int parse_redis(struct ctl *c, const char *s)
{
    const char *colon = strrchr(s, ':');
    size_t hlen;
    long port;

    if (s[0] == '/') {
        c->path = s;
        c->host = NULL;
        return CTL_OK;
    }
    if (colon == NULL || parse_port(colon + 1, &port) != 0)
        return fail(c, CTL_USAGE, "bad --redis '%s': expected IP:PORT or /path.sock", s);
    hlen = (size_t)(colon - s);
    if (hlen >= 2 && s[0] == '[' && s[hlen - 1] == ']') {
        s++;
        hlen -= 2;
    }
    if (hlen == 0 || hlen >= sizeof(c->hostbuf))
        return fail(c, CTL_USAGE, "bad --redis host in '%s'", s);
    memcpy(c->hostbuf, s, hlen);
    c->hostbuf[hlen] = '\0';
    c->host = c->hostbuf;
    c->path = NULL;
    c->port = (int)port;
    return CTL_OK;
}

/* --sentinel / REDIS_SENTINELS: comma-separated IP:PORT or [IPv6]:PORT. */
static int parse_sentinels(struct ctl *c, const char *s)
{
    c->nsentinels = 0;
    while (*s != '\0') {
        size_t len = strcspn(s, ",");
        if (c->nsentinels == PX_MAX_SENTINELS)
            return fail(c, CTL_USAGE, "too many sentinels (at most %d)", PX_MAX_SENTINELS);
        if (px_sentinel_parse_addr(s, len, &c->sentinels[c->nsentinels++]) != 0)
            return fail(c, CTL_USAGE, "bad sentinel '%.*s': expected IP:PORT (IP literals only)",
                        (int)(len > 64 ? 64 : len), s);
        s += len;
        if (*s == ',')
            s++;
    }
    if (c->nsentinels == 0)
        return fail(c, CTL_USAGE, "--sentinel needs at least one IP:PORT");
    return CTL_OK;
}

static const char *env(const char *name)
{
    const char *v = getenv(name);

    return v != NULL && v[0] != '\0' ? v : NULL;
}

/* Global options, then NOUN VERB. Returns an enum ctl_rc; *noun and *v are set once known
 * (borrowed from argv and verbs[]), so usage can be narrowed to them. */
static int dispatch(struct ctl *c, int argc, char **argv, const char **noun, const struct verb **v)
{
    static const struct option lo[] = {
        {"redis", required_argument, NULL, 'r'},
        {"password", required_argument, NULL, 'P'},
        {"user", required_argument, NULL, 'U'},
        {"db", required_argument, NULL, 'n'},
        {"sentinel", required_argument, NULL, 'S'},
        {"master", required_argument, NULL, 'M'},
        HELP_OPTION,
        END_OPTION,
    };
    long port;
    size_t i;
    int o, rc;

    c->host = "127.0.0.1";
    c->port = 6379;
    c->db = -1;
    if (env("REDIS_HOST") != NULL) {
        if (env("REDIS_HOST")[0] == '/')
            c->path = env("REDIS_HOST");
        else
            c->host = env("REDIS_HOST");
    }
    if (env("REDIS_PORT") != NULL) {
        if (parse_port(env("REDIS_PORT"), &port) != 0)
            return fail(c, CTL_USAGE, "bad REDIS_PORT '%s'", env("REDIS_PORT"));
        c->port = (int)port;
    }
    c->user = env("REDIS_USERNAME");
    c->password = env("REDIS_PASSWORD");
    const char *sentinels = env("REDIS_SENTINELS");
    int redis_given = 0, sentinel_given = 0;
    c->master = env("REDIS_MASTER_NAME");

    opt_reset();
    /* '+': stop at NOUN, so the verb's own options are left for the verb. */
    while ((o = getopt_long(argc, argv, "+:h", lo, NULL)) != -1) {
        switch (o) {
        case 'r':
            if ((rc = parse_redis(c, optarg)) != CTL_OK)
                return rc;
            redis_given = 1;
            break;
        case 'S':
            sentinels = optarg;
            sentinel_given = 1;
            break;
        case 'M': c->master = optarg; break;
        case 'P': c->password = optarg; break;
        case 'U': c->user = optarg; break;
        case 'n':
            if (strcmp(optarg, "0") == 0)
                c->db = 0;
            else if (parse_posint(optarg, INT_MAX, &c->db) != 0)
                return fail(c, CTL_USAGE, "bad --db '%s': expected 0 or more", optarg);
            break;
        default: return opt_error(c, o, argv);
        }
    }
    if (c->user != NULL && c->password == NULL)
        return fail(c, CTL_USAGE, "a Redis user needs a password (--password or REDIS_PASSWORD)");
    /* An option replaces the environment; two ways to Redis at one level are refused. */
    if (redis_given && sentinel_given)
        return fail(c, CTL_USAGE, "--redis and --sentinel exclude each other");
    if (redis_given)
        sentinels = NULL;
    else if (!sentinel_given && sentinels != NULL && env("REDIS_HOST") != NULL)
        return fail(c, CTL_USAGE, "REDIS_SENTINELS and REDIS_HOST exclude each other");
    if (sentinels != NULL) {
        if ((rc = parse_sentinels(c, sentinels)) != CTL_OK)
            return rc;
        if (c->master == NULL)
            return fail(c, CTL_USAGE, "--sentinel needs --master NAME (or REDIS_MASTER_NAME)");
        if (!px_sentinel_valid_name(c->master, strlen(c->master)))
            return fail(c, CTL_USAGE, "bad --master '%s': 1 to 64 of A-Z a-z 0-9 . _ -", c->master);
    }
    if (optind >= argc)
        return fail(c, CTL_USAGE, "missing command");
    if (!noun_known(argv[optind]))
        return fail(c, CTL_USAGE, "unknown command '%s'", argv[optind]);
    *noun = argv[optind];
    if (optind + 1 >= argc)
        return fail(c, CTL_USAGE, "missing verb after '%s'", *noun);
    if (strcmp(argv[optind + 1], "--help") == 0 || strcmp(argv[optind + 1], "-h") == 0)
        return CTL_HELP;
    for (i = 0; i < NVERBS; i++) {
        if (strcmp(verbs[i].noun, *noun) == 0 && strcmp(verbs[i].name, argv[optind + 1]) == 0) {
            *v = &verbs[i];
            /* The verb scans from its own name, as if it were argv[0]. */
            return verbs[i].run(c, argc - optind - 1, argv + optind + 1);
        }
    }
    return fail(c, CTL_USAGE, "unknown verb '%s %s'", *noun, argv[optind + 1]);
}

int main(int argc, char **argv)
{
    struct ctl c = {0};
    const struct verb *v = NULL;
    const char *noun = NULL;
    int rc;

    rc = dispatch(&c, argc, argv, &noun, &v);
    switch (rc) {
    case CTL_OK: break;
    case CTL_HELP:
        if (v != NULL)
            verb_usage(stdout, v);
        else
            usage(stdout, noun);
        rc = CTL_OK;
        break;
    case CTL_USAGE:
        fprintf(stderr, "proxyctl: %s\n", c.err);
        if (v != NULL)
            verb_usage(stderr, v);
        else
            usage(stderr, noun);
        break;
    case CTL_FAIL: fprintf(stderr, "proxyctl: %s\n", c.err); break;
    }
    if (c.rc != NULL)
        redisFree(c.rc);
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "proxyctl: cannot write output\n");
        return CTL_FAIL;
    }
    return rc;
}
