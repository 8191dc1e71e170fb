/* proxyproto.c — see proxyproto.h. Section numbers are those of HAProxy's
 * doc/proxy-protocol.txt. Stricter than the spec where it leaves room: the
 * proxy trusts what this header says about the client (rate limits, per-IP
 * caps, X-Forwarded-For), so only exact forms pass. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "proxy/proxyproto.h"

static enum px_parse bad(struct px_pp_result *out, const char *why)
{
    out->why = why;
    return PX_PARSE_BAD;
}

/* ---- version 1 (2.1): "PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n" ---- */

/* A decimal port, 0-65535, "0" or without a leading zero. */
static int v1_port(const uint8_t *p, size_t n, uint16_t *port)
{
    unsigned v = 0;

    if (n == 0 || n > 5 || (n > 1 && p[0] == '0'))
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        v = v * 10 + (unsigned)(p[i] - '0');
    }
    if (v > 65535)
        return -1;
    *port = (uint16_t)v;
    return 0;
}

/* An IP literal of family fam into addr (4 or 16 bytes). inet_pton is strict
 * enough: glibc refuses IPv4 octets with leading zeros, and both forms refuse
 * anything after the address. */
static int v1_addr(int fam, const uint8_t *p, size_t n, void *addr)
{
    char s[INET6_ADDRSTRLEN];

    if (n == 0 || n >= sizeof(s))
        return -1;
    memcpy(s, p, n);
    s[n] = '\0';
    return inet_pton(fam, s, addr) == 1 ? 0 : -1;
}

static enum px_parse parse_v1(const uint8_t *b, size_t len, struct px_pp_result *out)
{
    static const char magic[] = "PROXY ";
    size_t lim = len < PX_PP_V1_MAX ? len : PX_PP_V1_MAX, end = 0;

    if (memcmp(b, magic, len < 6 ? len : 6) != 0)
        return bad(out, "bad v1 signature");
    for (size_t i = 0; i < lim && end == 0; i++) {
        if (b[i] == '\r') {
            if (i + 1 >= PX_PP_V1_MAX)
                return bad(out, "v1 line longer than 107 bytes");
            if (i + 1 >= len)
                return PX_PARSE_AGAIN;
            if (b[i + 1] != '\n')
                return bad(out, "v1 CR without LF");
            end = i + 2;
        } else if (b[i] < 0x20 || b[i] > 0x7e) {
            return bad(out, "v1 control or non-ASCII byte");
        }
    }
    if (end == 0)
        return len >= PX_PP_V1_MAX ? bad(out, "v1 line longer than 107 bytes") : PX_PARSE_AGAIN;

    /* Split what lies between "PROXY " and CRLF at single spaces. */
    const uint8_t *f[6] = {NULL};
    size_t flen[6] = {0}, nf = 0, line_end = end - 2;
    for (size_t i = 6; i <= line_end;) {
        size_t j = i;
        while (j < line_end && b[j] != ' ')
            j++;
        if (j == i)
            return bad(out, "v1 empty field (double or trailing space)");
        if (nf == 6)
            return bad(out, "v1 too many fields");
        f[nf] = b + i;
        flen[nf++] = j - i;
        if (nf == 1 && j - i == 7 && !memcmp(b + i, "UNKNOWN", 7)) {
            /* 2.1: after UNKNOWN the receiver ignores the rest of the line. */
            out->version = 1;
            out->local = 1;
            out->len = end;
            return PX_PARSE_OK;
        }
        i = j + 1;
    }
    int fam;
    if (flen[0] == 4 && !memcmp(f[0], "TCP4", 4))
        fam = AF_INET;
    else if (flen[0] == 4 && !memcmp(f[0], "TCP6", 4))
        fam = AF_INET6;
    else
        return bad(out, "v1 protocol is not TCP4, TCP6 or UNKNOWN");
    if (nf != 5)
        return bad(out, "v1 needs exactly source, destination and two ports");

    uint8_t dst[16];
    uint16_t sport, dport;
    if (fam == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&out->src;
        if (v1_addr(AF_INET, f[1], flen[1], &sin->sin_addr) != 0 ||
            v1_addr(AF_INET, f[2], flen[2], dst) != 0)
            return bad(out, "v1 bad IPv4 address");
        sin->sin_family = AF_INET;
        out->srclen = sizeof(*sin);
    } else {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&out->src;
        if (v1_addr(AF_INET6, f[1], flen[1], &sin6->sin6_addr) != 0 ||
            v1_addr(AF_INET6, f[2], flen[2], dst) != 0)
            return bad(out, "v1 bad IPv6 address");
        sin6->sin6_family = AF_INET6;
        out->srclen = sizeof(*sin6);
    }
    if (v1_port(f[3], flen[3], &sport) != 0 || v1_port(f[4], flen[4], &dport) != 0)
        return bad(out, "v1 bad port");
    (void)dport; /* checked, not used: we know our own address */
    if (fam == AF_INET)
        ((struct sockaddr_in *)&out->src)->sin_port = htons(sport);
    else
        ((struct sockaddr_in6 *)&out->src)->sin6_port = htons(sport);
    out->version = 1;
    out->len = end;
    return PX_PARSE_OK;
}

/* ---- version 2 (2.2): a 16-byte binary head, then the address block ---- */

static const uint8_t v2_sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                   0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

enum { CMD_LOCAL = 0x0, CMD_PROXY = 0x1 };
enum { FAM_UNSPEC = 0x0, FAM_INET = 0x1, FAM_INET6 = 0x2, FAM_UNIX = 0x3 };
enum { TP_UNSPEC = 0x0, TP_STREAM = 0x1, TP_DGRAM = 0x2 };

static enum px_parse parse_v2(const uint8_t *b, size_t len, struct px_pp_result *out)
{
    /* Address bytes each family takes: two addresses, then two ports (2.2). */
    static const size_t fam_len[4] = {0, 12, 36, 216};

    if (memcmp(b, v2_sig, len < 12 ? len : 12) != 0)
        return bad(out, "bad v2 signature");
    if (len > 12 && (b[12] >> 4) != 2)
        return bad(out, "v2 version is not 2");
    if (len < 16)
        return PX_PARSE_AGAIN;

    unsigned cmd = b[12] & 0xf, fam = b[13] >> 4, tp = b[13] & 0xf;
    size_t alen = (size_t)b[14] << 8 | b[15];
    if (cmd != CMD_LOCAL && cmd != CMD_PROXY)
        return bad(out, "v2 command is neither LOCAL nor PROXY");
    if (fam > FAM_UNIX || tp > TP_DGRAM)
        return bad(out, "v2 unknown address family or transport");
    if (16 + alen > PX_PP_MAX)
        return bad(out, "v2 header longer than PX_PP_MAX");
    if (alen < fam_len[fam])
        return bad(out, "v2 address block shorter than its family needs");
    if (cmd == CMD_PROXY && fam != FAM_UNSPEC && (fam == FAM_UNIX || tp != TP_STREAM))
        return bad(out, "v2 PROXY is accepted for TCP over IPv4 or IPv6 only");
    if (len < 16 + alen)
        return PX_PARSE_AGAIN;

    out->version = 2;
    out->len = 16 + alen;
    /* 2.2: LOCAL (a balancer's own health check) discards the whole block; so
     * does AF_UNSPEC. The socket's peer stands. */
    if (cmd == CMD_LOCAL) {
        out->local = 1;
        return PX_PARSE_OK;
    }
    /* 2.2.7: type, 16-bit length, value; they must tile the rest exactly. */
    for (size_t p = 16 + fam_len[fam]; p < 16 + alen;) {
        if (p + 3 > 16 + alen)
            return bad(out, "v2 truncated TLV");
        p += 3 + ((size_t)b[p + 1] << 8 | b[p + 2]);
        if (p > 16 + alen)
            return bad(out, "v2 TLV longer than the header");
    }
    const uint8_t *a = b + 16;
    if (fam == FAM_UNSPEC) {
        out->local = 1;
    } else if (fam == FAM_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&out->src;
        sin->sin_family = AF_INET;
        memcpy(&sin->sin_addr, a, 4);
        memcpy(&sin->sin_port, a + 8, 2); /* both in network order */
        out->srclen = sizeof(*sin);
    } else {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&out->src;
        sin6->sin6_family = AF_INET6;
        memcpy(&sin6->sin6_addr, a, 16);
        memcpy(&sin6->sin6_port, a + 32, 2);
        out->srclen = sizeof(*sin6);
    }
    return PX_PARSE_OK;
}

enum px_parse px_pp_parse(const uint8_t *buf, size_t len, struct px_pp_result *out)
{
    memset(out, 0, sizeof(*out));
    if (len == 0)
        return PX_PARSE_AGAIN;
    if (buf[0] == 'P')
        return parse_v1(buf, len, out);
    if (buf[0] == 0x0D)
        return parse_v2(buf, len, out);
    return bad(out, "not a PROXY protocol header");
}
