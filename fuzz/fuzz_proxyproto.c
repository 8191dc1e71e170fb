/* fuzz_proxyproto.c — px_pp_parse() (proxy/proxyproto.c), the PROXY protocol
 * header that ppaccept.c reads off a socket on a proxy_protocol listener.
 *
 * Input: the bytes a peer sends. Oracles, which ppaccept.c relies on to take
 * exactly the header's bytes off the socket: OK says a length within the input
 * and PX_PP_MAX, the header alone parses the same, and every strict prefix of
 * it is AGAIN (so a prefix the parser calls AGAIN is header through and
 * through); AGAIN never happens at PX_PP_MAX bytes or more; BAD gives a reason
 * and stays BAD for every longer input; an address is AF_INET or AF_INET6
 * unless the header is LOCAL. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/proxyproto.h"
#include "fuzz/check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct px_pp_result r, r2;
    /* A copy of exactly its size, so ASan sees any read past the end. */
    uint8_t *buf = malloc(size ? size : 1);

    CHECK(buf != NULL);
    memcpy(buf, data, size);
    switch (px_pp_parse(buf, size, &r)) {
    case PX_PARSE_OK:
        CHECK(r.len > 0 && r.len <= size && r.len <= PX_PP_MAX);
        CHECK(r.version == 1 || r.version == 2);
        if (!r.local)
            CHECK((r.src.ss_family == AF_INET && r.srclen == sizeof(struct sockaddr_in)) ||
                  (r.src.ss_family == AF_INET6 && r.srclen == sizeof(struct sockaddr_in6)));
        CHECK(px_pp_parse(buf, r.len, &r2) == PX_PARSE_OK && r2.len == r.len &&
              r2.local == r.local && !memcmp(&r2.src, &r.src, sizeof(r.src)));
        for (size_t i = 0; i < r.len; i++)
            CHECK(px_pp_parse(buf, i, &r2) == PX_PARSE_AGAIN);
        break;
    case PX_PARSE_AGAIN: CHECK(size < PX_PP_MAX); break;
    case PX_PARSE_BAD:
        CHECK(r.why != NULL);
        /* the shortest BAD prefix: everything longer is BAD too */
        size_t first = size;
        while (first > 0 && px_pp_parse(buf, first - 1, &r2) == PX_PARSE_BAD)
            first--;
        for (size_t i = first; i <= size; i++)
            CHECK(px_pp_parse(buf, i, &r2) == PX_PARSE_BAD);
        break;
    }
    free(buf);
    return 0;
}
