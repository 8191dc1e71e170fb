/* fuzz_path.c — the request-target rules of routing/path.c: dot segments
 * (SPEC 9), the /toolbox/{id}/ split, and the query helpers route.c and
 * forward.c use for the DAYTONA_SANDBOX_AUTH_KEY parameter.
 *
 * Input: the request target. Oracles:
 *  - px_path_has_dot_segment() agrees with a reference that decodes the path
 *    first (%2e, %2f, %5c, '\') and then splits it into segments;
 *  - the toolbox split returns slices of the target, the ID free of '/' and '?';
 *  - what px_query_get() finds (the token route.c checks) px_query_strip()
 *    removes (forward.c), so a consumed token never reaches the runner: after
 *    the strip, px_query_get() finds nothing, and the output is never longer
 *    than the query. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>

#include "routing/path.h"
#include "fuzz/check.h"

static int inside(struct px_str outer, struct px_str s)
{
    return s.len == 0 || (s.p >= outer.p && s.p + s.len <= outer.p + outer.len);
}

/* The reference: decode the path part in one pass, then look at segments. */
static int ref_dot_segment(struct px_str t)
{
    char *d = malloc(t.len + 1);
    size_t n = 0, i = 0;
    int found = 0;

    CHECK(d != NULL);
    while (i < t.len && t.p[i] != '?') {
        char ch = t.p[i];
        if (ch == '%' && i + 2 < t.len) {
            char a = (char)tolower((unsigned char)t.p[i + 1]);
            char b = (char)tolower((unsigned char)t.p[i + 2]);
            if ((a == '2' && b == 'e') || (a == '2' && b == 'f') || (a == '5' && b == 'c')) {
                d[n++] = b == 'e' ? '.' : '/';
                i += 3;
                continue;
            }
        }
        d[n++] = ch == '\\' ? '/' : ch;
        i++;
    }
    for (size_t s = 0; s <= n && !found;) {
        size_t e = s;
        while (e < n && d[e] != '/')
            e++;
        if ((e - s == 1 && d[s] == '.') || (e - s == 2 && d[s] == '.' && d[s + 1] == '.'))
            found = 1;
        s = e + 1;
    }
    free(d);
    return found;
}

static void check_query(struct px_str query, struct px_str name)
{
    struct px_str v = PX_STR_NULL, sv = PX_STR_NULL;
    int got = px_query_get(query, name, &v), found = 0;
    char *out = malloc(query.len ? query.len : 1);
    CHECK(out != NULL);
    size_t n = px_query_strip(query, name, out, &found, &sv);

    CHECK(n <= query.len);
    if (got) {
        CHECK(inside(query, v));
        CHECK(found);
    }
    if (found)
        CHECK(sv.len == 0 || inside(query, sv));
    else
        CHECK(n == query.len && (n == 0 || memcmp(out, query.p, n) == 0));
    struct px_str left = PX_STR_NULL;
    CHECK(px_query_get(px_str_make(out, n), name, &left) == 0);
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = malloc(size ? size : 1);
    struct px_str t, id, rest;

    CHECK(buf != NULL);
    memcpy(buf, data, size);
    t = px_str_make(buf, size);

    CHECK(px_path_has_dot_segment(t) == ref_dot_segment(t));
    if (px_path_toolbox(t, &id, &rest) == 0) {
        CHECK(id.len > 0 && inside(t, id) && inside(t, rest));
        CHECK(memchr(id.p, '/', id.len) == NULL && memchr(id.p, '?', id.len) == NULL);
        CHECK(rest.len == 0 || rest.p[0] == '/' || rest.p[0] == '?');
        CHECK(id.p + id.len == rest.p || rest.len == 0);
        (void)px_path_has_dot_segment(rest);
    }
    struct px_str q = px_target_query(t);
    CHECK(inside(t, q));
    check_query(q, PX_STR("DAYTONA_SANDBOX_AUTH_KEY"));
    check_query(q, PX_STR("redirect"));
    check_query(q, PX_STR("a"));
    free(buf);
    return 0;
}
