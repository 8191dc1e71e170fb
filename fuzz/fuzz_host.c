/* fuzz_host.c — px_host_parse() (routing/host.c), the Host grammar of SPEC 1,
 * and px_str_is_label().
 *
 * Input: byte 0 picks the configured preview domains (none, one, two), the
 * rest is the Host value, in a buffer of exactly its size (the parser
 * lowercases in place). Oracles: results point into the buffer; a preview host
 * has a port in 1..65535 and a non-empty label of label characters; the name
 * is lowercase; and parsing the parsed name again gives the same answer
 * (route.c and lookup keys use the name, so two readings must agree). */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>

#include "routing/host.h"
#include "fuzz/check.h"

static char d0[] = "proxy.test", d1[] = "example.com";
static char *const domains[] = {d0, d1};

static int inside(const char *buf, size_t len, struct px_str s)
{
    return s.p >= buf && s.p + s.len <= buf + len;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct px_host h, h2;

    if (size < 1)
        return 0;
    int nd = data[0] % 3;
    size_t len = size - 1;
    char *buf = malloc(len ? len : 1);
    CHECK(buf != NULL);
    memcpy(buf, data + 1, len);
    (void)px_str_is_label(px_str_make(buf, len), 63);

    enum px_host_kind k = px_host_parse(buf, len, domains, nd, &h);
    switch (k) {
    case PX_HOST_BAD: CHECK(h.why != NULL); break;
    case PX_HOST_PREVIEW:
        CHECK(h.port >= 1 && h.port <= 65535);
        CHECK(h.label.len > 0 && inside(buf, len, h.label));
        CHECK(px_str_is_label(h.label, h.label.len));
        /* fall through */
    case PX_HOST_BASE:
        CHECK(h.name.len > 0 && inside(buf, len, h.name));
        for (size_t i = 0; i < h.name.len; i++)
            CHECK(!isupper((unsigned char)h.name.p[i]));
        CHECK(h.name.p[h.name.len - 1] != '.');
        {
            char *again = malloc(h.name.len);
            CHECK(again != NULL);
            memcpy(again, h.name.p, h.name.len);
            enum px_host_kind k2 = px_host_parse(again, h.name.len, domains, nd, &h2);
            CHECK(k2 == k);
            CHECK(px_str_eq(h2.name, h.name));
            if (k == PX_HOST_PREVIEW)
                CHECK(h2.port == h.port && px_str_eq(h2.label, h.label));
            (void)px_host_is_base(&h2, domains, nd);
            free(again);
        }
        break;
    }
    free(buf);
    return 0;
}
