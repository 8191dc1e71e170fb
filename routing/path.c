/* path.c — request-target checks and rewrites that must keep bytes intact. */
#include <ctype.h>

#include "routing/path.h"

/* Decodes one path byte: "%2e" -> '.', "%2f"/"%5c" -> '/', '\\' -> '/'.
 * Returns the byte and advances *i past what it read. */
static char path_byte(struct px_str p, size_t *i)
{
    char ch = p.p[*i];

    if (ch == '%' && *i + 2 < p.len) {
        char a = (char)tolower((unsigned char)p.p[*i + 1]),
             b = (char)tolower((unsigned char)p.p[*i + 2]);
        if (a == '2' && b == 'e') {
            *i += 3;
            return '.';
        }
        if ((a == '2' && b == 'f') || (a == '5' && b == 'c')) {
            *i += 3;
            return '/';
        }
    }
    *i += 1;
    return ch == '\\' ? '/' : ch;
}

int px_path_has_dot_segment(struct px_str path)
{
    size_t i = 0, seglen = 0, dots = 0;

    while (i < path.len && path.p[i] != '?') {
        char ch = path_byte(path, &i);
        if (ch == '/') {
            if (seglen > 0 && seglen == dots && dots <= 2)
                return 1;
            seglen = dots = 0;
            continue;
        }
        seglen++;
        if (ch == '.')
            dots++;
    }
    return seglen > 0 && seglen == dots && dots <= 2;
}

int px_path_toolbox(struct px_str path, struct px_str *id, struct px_str *rest)
{
    static const char pre[] = "/toolbox/";
    size_t n = sizeof(pre) - 1, i;

    if (path.len <= n || memcmp(path.p, pre, n) != 0)
        return -1;
    for (i = n; i < path.len && path.p[i] != '/' && path.p[i] != '?'; i++)
        ;
    if (i == n)
        return -1;
    *id = px_str_make(path.p + n, i - n);
    *rest = px_str_make(path.p + i, path.len - i);
    return 0;
}

size_t px_query_strip(struct px_str query, struct px_str name, char *out, int *found,
                      struct px_str *value)
{
    size_t o = 0, i = 0;
    int kept = 0;

    *found = 0;
    /* An absent query is PX_STR_NULL (px_target_query()): NULL + 0 below would
     * be undefined behaviour (UBSan, fuzz_path). Nothing to strip either way. */
    if (query.len == 0)
        return 0;
    for (;;) {
        size_t start = i;
        while (i < query.len && query.p[i] != '&')
            i++;
        struct px_str param = px_str_make(query.p + start, i - start);
        int match = param.len >= name.len && memcmp(param.p, name.p, name.len) == 0 &&
                    (param.len == name.len || param.p[name.len] == '=');
        if (match) {
            if (!*found && value != NULL)
                *value = param.len > name.len
                             ? px_str_make(param.p + name.len + 1, param.len - name.len - 1)
                             : PX_STR_NULL;
            *found = 1;
        } else {
            /* Every other parameter, empty ones included, stays byte for byte. */
            if (kept++)
                out[o++] = '&';
            memcpy(out + o, param.p, param.len);
            o += param.len;
        }
        if (i >= query.len)
            break;
        i++; /* skip '&' */
    }
    return o;
}

struct px_str px_target_query(struct px_str target)
{
    const char *q = memchr(target.p, '?', target.len);

    return q == NULL ? PX_STR_NULL : px_str_make(q + 1, target.len - (size_t)(q + 1 - target.p));
}

int px_query_get(struct px_str query, struct px_str name, struct px_str *value)
{
    for (size_t i = 0; i < query.len;) {
        const char *st = query.p + i, *amp = memchr(st, '&', query.len - i);
        size_t len = amp != NULL ? (size_t)(amp - st) : query.len - i;
        if (len > name.len && st[name.len] == '=' && memcmp(st, name.p, name.len) == 0) {
            *value = px_str_make(st + name.len + 1, len - name.len - 1);
            return 1;
        }
        i += len + 1;
    }
    return 0;
}
