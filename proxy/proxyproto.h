/* proxyproto.h — the PROXY protocol header (v1 text, v2 binary) that an L4
 * load balancer (HAProxy `send-proxy`/`send-proxy-v2`, a cloud NLB) writes at
 * the start of a TCP connection to say whom it carries. The reference is
 * HAProxy's doc/proxy-protocol.txt ("The PROXY protocol", versions 1 & 2).
 *
 * The parser is pure: it looks at a byte buffer, touches no socket and keeps
 * no state, so a caller feeds it the prefix received so far, again and again,
 * until it says OK or BAD. proxy/ppaccept.c drives it on accepted sockets. */
#ifndef PX_PROXYPROTO_H
#define PX_PROXYPROTO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "proxy/h1.h" /* enum px_parse */

/* v1: "PROXY TCP6 <39> <39> 65535 65535\r\n" is the longest line (spec 2.1). */
#define PX_PP_V1_MAX 107
/* v2: 16 fixed bytes, then at most 216 address bytes (AF_UNIX, the largest
 * block), then TLVs. The spec allows 64 KiB of TLVs; what balancers send
 * (AWS NLB's VPC endpoint ID, Azure's link ID, a unique ID, CRC32C, ALPN, an
 * authority) fits easily in PX_PP_V2_TLV_MAX, and a bound is what keeps
 * one accepted socket from costing more than a small fixed buffer. */
#define PX_PP_V2_TLV_MAX 1024
#define PX_PP_MAX (16 + 216 + PX_PP_V2_TLV_MAX) /* the most bytes a header may take */

struct px_pp_result {
    size_t len;  /* bytes the header takes; the connection's own data follows */
    int version; /* 1 or 2 */
    /* 1: no client address is given (v1 UNKNOWN, v2 LOCAL, v2 AF_UNSPEC): the
     * socket's own peer stands (a balancer's health check). 0: src holds it. */
    int local;
    struct sockaddr_storage src; /* AF_INET or AF_INET6, port in network order */
    socklen_t srclen;
    const char *why; /* on PX_PARSE_BAD: a static reason, for logs */
};

/* Parses the header at the start of buf[0..len). Returns
 *  - PX_PARSE_OK: a whole valid header; *out is filled, out->len bytes are the header
 *    (never more than PX_PP_MAX) and whatever follows belongs to the connection;
 *  - PX_PARSE_AGAIN: every byte so far is a valid start of a header, none of
 *    them is beyond its end: read more and call again with the longer buffer;
 *  - PX_PARSE_BAD: not a header we accept (out->why says why): close.
 * Accepted: v1 TCP4/TCP6 with single spaces, IP literals of the named
 * family, decimal ports 0-65535 without leading zeros; v1 UNKNOWN; v2 PROXY
 * over STREAM with AF_INET/AF_INET6 (TLVs length-checked and skipped), v2 LOCAL,
 * v2 AF_UNSPEC. Anything else is BAD, and as early as its first wrong byte. */
enum px_parse px_pp_parse(const uint8_t *buf, size_t len, struct px_pp_result *out);

#endif
