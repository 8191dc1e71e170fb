/* sentinel_parse.c — see sentinel_parse.h. No state, no I/O. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "auth/sentinel_parse.h"

/* Longest "[IPv6]:PORT" we look at; anything longer is not an address. */
#define ADDR_MAX (PX_SENTINEL_IP_MAX + 8)
/* Longest +switch-master payload: a name and four address parts. */
#define SWITCH_MAX (PX_SENTINEL_NAME_MAX + 2 * (PX_SENTINEL_IP_MAX + 7) + 8)

static int parse_port(const char *s, size_t len, int *out)
{
    int v = 0;

    if (len == 0 || len > 5)
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    if (v < 1 || v > 65535)
        return -1;
    *out = v;
    return 0;
}

/* An IP literal of len bytes into out (NUL-terminated). */
static int parse_ip(const char *s, size_t len, char *out)
{
    struct in6_addr tmp;

    if (len == 0 || len >= PX_SENTINEL_IP_MAX || memchr(s, '\0', len) != NULL)
        return -1;
    memcpy(out, s, len);
    out[len] = '\0';
    if (inet_pton(AF_INET, out, &tmp) != 1 && inet_pton(AF_INET6, out, &tmp) != 1)
        return -1;
    return 0;
}

int px_sentinel_parse_addr(const char *s, size_t len, struct px_sentinel_addr *out)
{
    const char *colon = NULL;
    size_t hlen;

    if (len == 0 || len > ADDR_MAX)
        return -1;
    for (size_t i = len; i > 0; i--)
        if (s[i - 1] == ':') {
            colon = s + i - 1;
            break;
        }
    if (colon == NULL || parse_port(colon + 1, len - (size_t)(colon + 1 - s), &out->port) != 0)
        return -1;
    hlen = (size_t)(colon - s);
    if (hlen >= 2 && s[0] == '[' && s[hlen - 1] == ']') {
        s++;
        hlen -= 2;
    }
    return parse_ip(s, hlen, out->ip);
}

int px_sentinel_valid_name(const char *s, size_t len)
{
    if (len == 0 || len > PX_SENTINEL_NAME_MAX)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '_' || ch == '-'))
            return 0;
    }
    return 1;
}

int px_sentinel_parse_master(const redisReply *rp, struct px_sentinel_addr *out)
{
    const redisReply *ip, *port;

    if (rp == NULL || rp->type != REDIS_REPLY_ARRAY || rp->elements != 2)
        return -1;
    ip = rp->element[0];
    port = rp->element[1];
    if (ip == NULL || port == NULL || ip->type != REDIS_REPLY_STRING ||
        port->type != REDIS_REPLY_STRING)
        return -1;
    if (parse_ip(ip->str, ip->len, out->ip) != 0 || parse_port(port->str, port->len, &out->port))
        return -1;
    return 0;
}

int px_sentinel_is_master(const redisReply *rp)
{
    const redisReply *role;

    if (rp == NULL || rp->type != REDIS_REPLY_ARRAY || rp->elements < 1)
        return 0;
    role = rp->element[0];
    return role != NULL && role->type == REDIS_REPLY_STRING && role->len == 6 &&
           memcmp(role->str, "master", 6) == 0;
}

int px_sentinel_parse_switch(const char *p, size_t len, const char *name,
                             struct px_sentinel_addr *out)
{
    const char *w[5];
    size_t wl[5];
    int n = 0;
    size_t i = 0;

    if (len > SWITCH_MAX)
        return -1;
    while (i < len) {
        size_t start;
        if (p[i] == ' ') {
            i++;
            continue;
        }
        if (n == 5)
            return -1; /* a sixth word */
        start = i;
        while (i < len && p[i] != ' ')
            i++;
        w[n] = p + start;
        wl[n++] = i - start;
    }
    if (n != 5)
        return -1;
    if (wl[0] != strlen(name) || memcmp(w[0], name, wl[0]) != 0)
        return px_sentinel_valid_name(w[0], wl[0]) ? 1 : -1;
    if (parse_ip(w[3], wl[3], out->ip) != 0 || parse_port(w[4], wl[4], &out->port) != 0)
        return -1;
    return 0;
}
