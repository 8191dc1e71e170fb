/* h1.c — HTTP/1.1 heads and chunked framing.
 *
 * Heads are found by a bounded search, scanned byte by byte for what RFC 9112
 * says to reject (bare CR or LF, obs-fold, controls, space before the colon),
 * then parsed with http-parser. Smuggling defences live here: a message that
 * two parsers could frame differently never gets past px_h1_parse_request(). */
#define _GNU_SOURCE /* memmem */
#include <ctype.h>
#include <stdlib.h>
#include <sys/types.h>

#include "proxy/h1.h"

/* RFC 9110 5.6.2 token characters, as a table: this runs for every header byte. */
static const unsigned char TCHAR[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1, ['+'] = 1,
    ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1,  ['~'] = 1, ['0'] = 1,
    ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1,  ['7'] = 1, ['8'] = 1,
    ['9'] = 1, ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1,  ['f'] = 1, ['g'] = 1,
    ['h'] = 1, ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1,  ['n'] = 1, ['o'] = 1,
    ['p'] = 1, ['q'] = 1, ['r'] = 1, ['s'] = 1, ['t'] = 1, ['u'] = 1,  ['v'] = 1, ['w'] = 1,
    ['x'] = 1, ['y'] = 1, ['z'] = 1, ['A'] = 1, ['B'] = 1, ['C'] = 1,  ['D'] = 1, ['E'] = 1,
    ['F'] = 1, ['G'] = 1, ['H'] = 1, ['I'] = 1, ['J'] = 1, ['K'] = 1,  ['L'] = 1, ['M'] = 1,
    ['N'] = 1, ['O'] = 1, ['P'] = 1, ['Q'] = 1, ['R'] = 1, ['S'] = 1,  ['T'] = 1, ['U'] = 1,
    ['V'] = 1, ['W'] = 1, ['X'] = 1, ['Y'] = 1, ['Z'] = 1,
};

static inline int tchar(unsigned char c)
{
    return TCHAR[c];
}

/* Index of the first control byte in p[0..n) (HTAB allowed when tab), DEL
 * included, or n. Eight bytes at a time: this runs over every byte of both
 * heads of every exchange (issue 13). A word with no byte below 0x20 and none
 * equal to 0x7f is skipped whole (the classic "has less than" and "has zero"
 * bit tests, exact as booleans for thresholds up to 0x80); a word that may
 * hold one is checked byte by byte, which a tab in a value makes rare. */
static inline int ctl(unsigned char c, int tab)
{
    return (c < 0x20 && !(tab && c == '\t')) || c == 0x7f;
}

static size_t find_ctl(const char *p, size_t n, int tab)
{
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    size_t i = 0;

    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        uint64_t del = w ^ (ones * 0x7f);
        if ((((w - ones * 0x20) & ~w) | ((del - ones) & ~del)) & highs)
            for (size_t j = i; j < i + 8; j++)
                if (ctl((unsigned char)p[j], tab))
                    return j;
    }
    for (; i < n; i++)
        if (ctl((unsigned char)p[i], tab))
            return i;
    return n;
}

int px_h1_value_ok(const char *p, size_t n)
{
    return find_ctl(p, n, 1) == n;
}

/* The first "\r\n\r\n" in p[0..len), first_lf the first LF or NULL: one
 * memchr per line (glibc's memmem costs ~800 instructions on a short head). */
static const char *find_crlfcrlf(const char *p, size_t len, const char *first_lf)
{
    for (const char *lf = first_lf; lf != NULL;
         lf = memchr(lf + 1, '\n', len - (size_t)(lf + 1 - p)))
        if (lf - p >= 3 && lf[-1] == '\r' && lf[-2] == '\n' && lf[-3] == '\r')
            return lf - 3;
    return NULL;
}

/* px_h1_find_head() on contiguous bytes (the same rules, in the same order). */
static enum px_parse find_head_flat(const char *p, size_t len, size_t max_line, size_t max_head,
                                    size_t *head_len, int *status)
{
    const char *lf = memchr(p, '\n', len), *end;

    /* lf - p counts the CR: a line of exactly max_line bytes is allowed. */
    if ((lf == NULL && len > max_line + 1) ||
        (lf != NULL && lf > p && (size_t)(lf - p) - 1 > max_line)) {
        *status = 414;
        return PX_PARSE_BAD;
    }
    end = find_crlfcrlf(p, len, lf);
    if (end == NULL) {
        if (len > max_head) {
            *status = 431;
            return PX_PARSE_BAD;
        }
        if (memmem(p, len, "\n\n", 2) != NULL || memmem(p, len, "\n\r\n", 3) != NULL ||
            memmem(p, len, "\r\r", 2) != NULL) {
            *status = 400;
            return PX_PARSE_BAD;
        }
        return PX_PARSE_AGAIN;
    }
    if ((size_t)(end - p) + 4 > max_head) {
        *status = 431;
        return PX_PARSE_BAD;
    }
    *head_len = (size_t)(end - p) + 4;
    return PX_PARSE_OK;
}

enum px_parse px_h1_find_head(struct evbuffer *in, size_t max_line, size_t max_head,
                              size_t *head_len, int *status)
{
    size_t len = evbuffer_get_length(in), eol_len;
    struct evbuffer_ptr end, line;

    /* The method is a token: anything else (a TLS ClientHello, binary junk) is
     * refused at once instead of waiting for a head that never comes. */
    unsigned char first[16];
    ev_ssize_t nfirst = evbuffer_copyout(in, first, sizeof(first));
    for (ev_ssize_t i = 0; i < nfirst && first[i] != ' '; i++)
        if (!tchar(first[i]) && !(i > 0 && first[i] == '/')) {
            *status = 400;
            return PX_PARSE_BAD;
        }
    /* The common case, a head in one chain of the buffer: search it with
     * memchr/memmem, which are several times cheaper than libevent's chain-
     * walking searches (issue 13). Same answers either way. */
    struct evbuffer_iovec v;
    if (evbuffer_peek(in, -1, NULL, &v, 1) == 1 && v.iov_len == len)
        return find_head_flat(v.iov_base, len, max_line, max_head, head_len, status);
    line = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_LF);
    /* line.pos counts the CR: a line of exactly max_line bytes is allowed. */
    if ((line.pos < 0 && len > max_line + 1) || (line.pos > 0 && (size_t)line.pos - 1 > max_line)) {
        *status = 414;
        return PX_PARSE_BAD;
    }
    end = evbuffer_search(in, "\r\n\r\n", 4, NULL);
    if (end.pos < 0) {
        if (len > max_head) {
            *status = 431;
            return PX_PARSE_BAD;
        }
        /* A head ended by bare LFs or CRs would otherwise wait for the header
         * timeout (nginx and HAProxy answer "\r\n\r\r\n" with 400 at once). */
        if (evbuffer_search(in, "\n\n", 2, NULL).pos >= 0 ||
            evbuffer_search(in, "\n\r\n", 3, NULL).pos >= 0 ||
            evbuffer_search(in, "\r\r", 2, NULL).pos >= 0) {
            *status = 400;
            return PX_PARSE_BAD;
        }
        return PX_PARSE_AGAIN;
    }
    if ((size_t)end.pos + 4 > max_head) {
        *status = 431;
        return PX_PARSE_BAD;
    }
    *head_len = (size_t)end.pos + 4;
    return PX_PARSE_OK;
}

/* RFC 9112 2.2, 5.1, 5.2: every line ends in CRLF; no bare CR/LF; no controls
 * but HTAB in values; no obs-fold; field names are tokens directly followed by
 * ':'. Returns the number of field lines, or -1. */
static int scan_head(const char *p, size_t len, const char **why)
{
    size_t i = 0;
    int nfields = -1; /* the start line is not a field */

    while (i < len) {
        size_t s = i;
        const char *cr = memchr(p + i, '\r', len - i);
        i = cr != NULL ? (size_t)(cr - p) : len;
        if (memchr(p + s, '\n', i - s) != NULL) { /* a bare LF inside the line */
            *why = "bare CR or LF in the request head";
            return -1;
        }
        if (i + 1 >= len || p[i] != '\r' || p[i + 1] != '\n') {
            *why = "bare CR or LF in the request head";
            return -1;
        }
        if (i == s) { /* the empty line that ends the head */
            /* ...but not in place of the start line: -1 must come with a
             * reason (fuzz_h1_request found "\r\n" returning -1 without one). */
            if (nfields < 0) {
                *why = "missing start line";
                return -1;
            }
            return i + 2 == len ? nfields : (*why = "data after the head", -1);
        }
        if (nfields >= 0) {
            size_t k = s;
            if (p[s] == ' ' || p[s] == '\t') {
                *why = "obsolete line folding is not allowed";
                return -1;
            }
            while (k < i && tchar((unsigned char)p[k]))
                k++;
            if (k == s || k == i || p[k] != ':') {
                *why = "malformed header field name";
                return -1;
            }
            k++;
            if (find_ctl(p + k, i - k, 1) != i - k) {
                *why = "control character in a header value";
                return -1;
            }
        } else if (find_ctl(p + s, i - s, 0) != i - s) {
            *why = "control character in the request line";
            return -1;
        }
        nfields++;
        i += 2;
    }
    *why = "unterminated head";
    return -1;
}

struct parse_ctx {
    struct px_head *h;
    int too_many;
};

static int on_url(http_parser *p, const char *at, size_t len)
{
    struct parse_ctx *x = p->data;
    x->h->target = px_str_make(at, len);
    return 0;
}

static int on_status(http_parser *p, const char *at, size_t len)
{
    struct parse_ctx *x = p->data;
    x->h->reason = px_str_make(at, len);
    return 0;
}

static int on_field(http_parser *p, const char *at, size_t len)
{
    struct parse_ctx *x = p->data;
    struct px_head *h = x->h;

    if (h->nhdrs == h->cap) {
        x->too_many = 1;
        return -1;
    }
    h->hdrs[h->nhdrs].name = px_str_make(at, len);
    h->hdrs[h->nhdrs].value = px_str_make(at + len, 0);
    h->nhdrs++;
    return 0;
}

static int on_value(http_parser *p, const char *at, size_t len)
{
    struct parse_ctx *x = p->data;
    struct px_head *h = x->h;
    /* The head is contiguous, so http-parser reports each value in one piece. */
    h->hdrs[h->nhdrs - 1].value = px_str_make(at, len);
    return 0;
}

static int on_headers_complete(http_parser *p)
{
    (void)p;
    return 1; /* framing is ours to decide: tell http-parser there is no body */
}

static const http_parser_settings head_settings = {
    .on_url = on_url,
    .on_status = on_status,
    .on_header_field = on_field,
    .on_header_value = on_value,
    .on_headers_complete = on_headers_complete,
};

static struct px_str trim(struct px_str s)
{
    while (s.len && (s.p[0] == ' ' || s.p[0] == '\t'))
        s.p++, s.len--;
    while (s.len && (s.p[s.len - 1] == ' ' || s.p[s.len - 1] == '\t'))
        s.len--;
    return s;
}

int px_token_list_has(struct px_str list, struct px_str tok)
{
    size_t i = 0;

    while (i < list.len) {
        size_t s = i;
        while (i < list.len && list.p[i] != ',')
            i++;
        if (px_str_ieq(trim(px_str_make(list.p + s, i - s)), tok))
            return 1;
        i++;
    }
    return 0;
}

const struct px_hdr *px_head_get(const struct px_head *h, struct px_str name)
{
    for (int i = 0; i < h->nhdrs; i++)
        if (px_str_ieq(h->hdrs[i].name, name))
            return &h->hdrs[i];
    return NULL;
}

void px_head_free(struct px_head *h)
{
    free(h->hdrs); /* the head's bytes live in the same block */
    memset(h, 0, sizeof(*h));
}

/* RFC 9112 3: method SP request-target SP HTTP-version, each part strict.
 * http-parser in its non-strict build lets "HTTX/1.1" through, so we check.
 * Returns 0, -1 (400) or -4 (505). */
static int check_request_line(const char *p, size_t len, const char **why)
{
    size_t i = 0, t;

    while (i < len && tchar((unsigned char)p[i]))
        i++;
    if (i == 0 || i >= len || p[i] != ' ')
        goto bad;
    t = ++i;
    while (i < len && p[i] != ' ' && p[i] != '\r')
        i++;
    if (i == t || i >= len || p[i] != ' ')
        goto bad;
    i++;
    if (len - i < 10 || memcmp(p + i, "HTTP/", 5) != 0 || !isdigit((unsigned char)p[i + 5]) ||
        p[i + 6] != '.' || !isdigit((unsigned char)p[i + 7]) || p[i + 8] != '\r')
        goto bad;
    if (p[i + 5] != '1' || (p[i + 7] != '0' && p[i + 7] != '1')) {
        *why = "unsupported HTTP version";
        return -4;
    }
    return 0;
bad:
    *why = "malformed request line";
    return -1;
}

/* RFC 9112 4: HTTP-version SP 3DIGIT SP [reason], the code within 100..599
 * (RFC 9110 15; a 000 would read as "nothing sent" in conn.c). As for requests, the
 * non-strict http-parser takes "HTTX/1.1" or "HT@P/1.1" and two-digit codes, so
 * we check; the SP before an empty reason is optional, as most parsers allow.
 * (fuzz_h1_response: px_h1_find_head() refused heads this parser accepted.) */
static int check_status_line(const char *p, size_t len, const char **why)
{
    if (len < 13 || memcmp(p, "HTTP/", 5) != 0 || !isdigit((unsigned char)p[5]) || p[6] != '.' ||
        !isdigit((unsigned char)p[7]) || p[8] != ' ' || p[9] < '1' || p[9] > '5' ||
        !isdigit((unsigned char)p[10]) || !isdigit((unsigned char)p[11]) ||
        (p[12] != ' ' && p[12] != '\r')) {
        *why = "malformed status line";
        return -1;
    }
    return 0;
}

/* Cuts a response head that scan_head() and check_status_line() accepted:
 * "HTTP/d.d NNN[ reason]" then "name:value" lines, each ending in CRLF, then
 * the empty line; h->cap is the number of field lines. */
static void split_response(struct px_head *h)
{
    const char *p = h->buf, *end = h->buf + h->len - 2, *eol = memchr(p, '\r', h->len);

    h->http_major = p[5] - '0';
    h->http_minor = p[7] - '0';
    h->status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    h->reason = p + 12 < eol ? px_str_make(p + 13, (size_t)(eol - p - 13)) : px_str_make(eol, 0);
    for (p = eol + 2; p < end && h->nhdrs < h->cap; p = eol + 2) {
        const char *colon = memchr(p, ':', (size_t)(end - p));
        eol = memchr(colon, '\r', (size_t)(end + 2 - colon));
        h->hdrs[h->nhdrs].name = px_str_make(p, (size_t)(colon - p));
        h->hdrs[h->nhdrs].value = px_str_make(colon + 1, (size_t)(eol - colon - 1));
        h->nhdrs++;
    }
}

static int parse_common(struct px_head *h, const char *data, size_t len, int max_headers,
                        enum http_parser_type type, const char **why)
{
    http_parser hp;
    struct parse_ctx x = {.h = h};
    int nf;

    memset(h, 0, sizeof(*h));
    h->content_length = -1;
    if ((nf = scan_head(data, len, why)) < 0)
        return -1;
    if (type == HTTP_REQUEST && (nf = check_request_line(data, len, why) ? -1 : nf) < 0)
        return check_request_line(data, len, why);
    if (type == HTTP_RESPONSE && check_status_line(data, len, why) != 0)
        return -1;
    if (nf > max_headers) {
        *why = "too many header fields";
        return -2;
    }
    h->cap = nf > 0 ? nf : 1;
    /* One block: the header array, then the head's bytes. */
    h->hdrs = malloc(sizeof(*h->hdrs) * (size_t)h->cap + len + 1);
    if (h->hdrs == NULL) {
        *why = "out of memory";
        return -3;
    }
    h->buf = (char *)(h->hdrs + h->cap);
    memcpy(h->buf, data, len);
    h->buf[len] = '\0';
    h->len = len;
    if (type == HTTP_RESPONSE) {
        /* The runner's head: scan_head() and check_status_line() have checked
         * every byte http-parser would, and more strictly, so what is left is
         * cutting lines, which is cheaper done here than by a second byte-by-
         * byte pass through http-parser's callbacks (issue 13). */
        split_response(h);
    } else {
        http_parser_init(&hp, type);
        hp.data = &x;
        size_t n = http_parser_execute(&hp, &head_settings, h->buf, len);
        if (HTTP_PARSER_ERRNO(&hp) != HPE_OK || n != len || x.too_many) {
            *why = "malformed message head";
            return -1;
        }
        const char *sp = memchr(h->buf, ' ', len);
        h->method = px_str_make(h->buf, sp ? (size_t)(sp - h->buf) : 0);
        h->http_major = hp.http_major;
        h->http_minor = hp.http_minor;
        h->m = (enum http_method)hp.method;
    }
    if (h->http_major != 1) {
        *why = "unsupported HTTP version";
        return -4;
    }

    /* Framing and connection semantics, checked on our own reading of the fields. */
    struct px_str conn = PX_STR_NULL;
    int nhost = 0, te = 0;
    for (int i = 0; i < h->nhdrs; i++) {
        struct px_hdr *f = &h->hdrs[i];
        f->value = trim(f->value);
        if (px_str_ieq(f->name, PX_STR("content-length"))) {
            int64_t v = 0;
            if (f->value.len == 0 || f->value.len > 18) {
                *why = "invalid Content-Length";
                return -1;
            }
            for (size_t k = 0; k < f->value.len; k++) {
                if (!isdigit((unsigned char)f->value.p[k])) {
                    *why = "invalid Content-Length";
                    return -1;
                }
                v = v * 10 + (f->value.p[k] - '0');
            }
            if (h->content_length >= 0 && h->content_length != v) {
                *why = "conflicting Content-Length headers";
                return -1;
            }
            h->content_length = v;
        } else if (px_str_ieq(f->name, PX_STR("transfer-encoding"))) {
            /* Only "chunked", once: anything else could be framed differently
             * by the next hop (RFC 9112 6.1). */
            if (te++ || !px_str_ieq(f->value, PX_STR("chunked"))) {
                *why = "unsupported Transfer-Encoding";
                return -1;
            }
            h->chunked = 1;
        } else if (px_str_ieq(f->name, PX_STR("host"))) {
            nhost++;
            h->host = f->value;
        } else if (px_str_ieq(f->name, PX_STR("connection"))) {
            conn = f->value; /* several Connection fields: the last one counts */
            if (px_token_list_has(f->value, PX_STR("upgrade")))
                h->conn_upgrade = 1;
            if (px_token_list_has(f->value, PX_STR("close")))
                conn = PX_STR("close");
        } else if (px_str_ieq(f->name, PX_STR("expect"))) {
            if (px_str_ieq(f->value, PX_STR("100-continue")))
                h->expect_continue = 1;
        }
    }
    if (h->chunked && h->content_length >= 0) {
        *why = "both Content-Length and Transfer-Encoding";
        return -1;
    }
    if (h->chunked && h->http_minor == 0) {
        *why = "Transfer-Encoding in an HTTP/1.0 message";
        return -1;
    }
    if (type == HTTP_REQUEST) {
        if (nhost > 1 || (nhost == 0 && h->http_minor == 1)) {
            *why = nhost ? "more than one Host header" : "missing Host header";
            return -1;
        }
        const struct px_hdr *up = px_head_get(h, PX_STR("upgrade"));
        h->ws_upgrade = h->conn_upgrade && up != NULL && h->m == HTTP_GET &&
                        px_token_list_has(up->value, PX_STR("websocket"));
    }
    if (h->http_minor == 0)
        h->keepalive = conn.len && px_token_list_has(conn, PX_STR("keep-alive"));
    else
        h->keepalive = !px_token_list_has(conn, PX_STR("close"));
    return 0;
}

int px_h1_parse_request(struct px_head *h, const char *data, size_t len, int max_headers,
                        int *status, const char **why)
{
    int rc = parse_common(h, data, len, max_headers, HTTP_REQUEST, why);

    switch (rc) {
    case 0: break;
    case -2: *status = 431; return -1;
    case -3: *status = 500; return -1;
    case -4: *status = 505; return -1;
    default: *status = 400; return -1;
    }
    if (h->m == HTTP_CONNECT) {
        *status = 405;
        *why = "CONNECT is not supported";
        return -1;
    }
    return 0;
}

int px_h1_parse_response(struct px_head *h, const char *data, size_t len, int max_headers,
                         const char **why)
{
    return parse_common(h, data, len, max_headers, HTTP_RESPONSE, why) == 0 ? 0 : -1;
}

int px_h1_response_has_body(const struct px_head *resp, enum http_method req_method)
{
    if (req_method == HTTP_HEAD || resp->status / 100 == 1 || resp->status == 204 ||
        resp->status == 304)
        return 0;
    return 1;
}

/* ---- chunked ---- */

void px_chunked_reset(struct px_chunked *ch)
{
    if (ch->trailers != NULL)
        evbuffer_free(ch->trailers);
    memset(ch, 0, sizeof(*ch));
}

/* Reads one CRLF-terminated line (at most PX_CHUNK_MAX_LINE) into buf without
 * the CRLF. Returns its length, -2 for AGAIN, -1 for BAD. */
static ssize_t take_line(struct evbuffer *in, char *buf, size_t cap)
{
    size_t eol_len;
    struct evbuffer_ptr p = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_LF);

    if (p.pos < 0)
        return evbuffer_get_length(in) > cap ? -1 : -2;
    if ((size_t)p.pos >= cap || p.pos == 0)
        return -1;
    evbuffer_remove(in, buf, (size_t)p.pos + 1);
    if (buf[p.pos - 1] != '\r') /* bare LF */
        return -1;
    for (ssize_t i = 0; i < p.pos - 1; i++)
        if (buf[i] == '\r' || buf[i] == '\0')
            return -1;
    return p.pos - 1;
}

enum px_parse px_chunked_feed(struct px_chunked *ch, struct evbuffer *in, struct evbuffer *out)
{
    char line[PX_CHUNK_MAX_LINE + 2];
    ssize_t n;

    for (;;) {
        switch (ch->st) {
        case PX_CH_SIZE: {
            uint64_t v = 0;
            ssize_t i = 0;
            if ((n = take_line(in, line, sizeof(line))) == -2)
                return PX_PARSE_AGAIN;
            if (n < 0)
                return PX_PARSE_BAD;
            for (; i < n && isxdigit((unsigned char)line[i]); i++) {
                if (i == 16)
                    return PX_PARSE_BAD;
                v = v * 16 + (uint64_t)(isdigit((unsigned char)line[i])
                                            ? line[i] - '0'
                                            : (tolower((unsigned char)line[i]) - 'a' + 10));
            }
            /* At most 2^52 - 1, as in HAProxy: larger sizes are no real upload
             * and may be misread by the next hop (negative as int64, rounded
             * as a double); nginx and HAProxy refuse them (tests/DIFFERENTIAL.md). */
            if (i == 0 || v >= (UINT64_C(1) << 52))
                return PX_PARSE_BAD;
            while (i < n && (line[i] == ' ' || line[i] == '\t'))
                i++;
            if (i < n && line[i] != ';')
                return PX_PARSE_BAD;
            for (; i < n; i++) /* extensions are dropped, but must be printable */
                if ((unsigned char)line[i] < 0x20 && line[i] != '\t')
                    return PX_PARSE_BAD;
            if (v == 0) {
                ch->st = PX_CH_TRAILER;
                break;
            }
            ch->left = v;
            if (out != NULL && !ch->plain)
                evbuffer_add_printf(out, "%llx\r\n", (unsigned long long)v);
            ch->st = PX_CH_DATA;
            break;
        }
        case PX_CH_DATA: {
            size_t avail = evbuffer_get_length(in);
            size_t take = avail < ch->left ? avail : (size_t)ch->left;
            if (take == 0)
                return PX_PARSE_AGAIN;
            if (out != NULL)
                evbuffer_remove_buffer(in, out, take); /* moves chains, no copy */
            else
                evbuffer_drain(in, take);
            ch->left -= take;
            ch->total += take;
            if (ch->left == 0)
                ch->st = PX_CH_DATA_END;
            break;
        }
        case PX_CH_DATA_END: {
            unsigned char crlf[2];
            if (evbuffer_get_length(in) < 2)
                return PX_PARSE_AGAIN;
            evbuffer_remove(in, crlf, 2);
            if (crlf[0] != '\r' || crlf[1] != '\n')
                return PX_PARSE_BAD;
            if (out != NULL && !ch->plain)
                evbuffer_add(out, "\r\n", 2);
            ch->st = PX_CH_SIZE;
            break;
        }
        case PX_CH_TRAILER: {
            unsigned char two[2];
            if (evbuffer_copyout(in, two, 2) == 2 && two[0] == '\r' && two[1] == '\n') {
                evbuffer_drain(in, 2);
                if (out != NULL && !ch->plain) {
                    evbuffer_add(out, "0\r\n", 3);
                    if (ch->trailers != NULL)
                        evbuffer_add_buffer(out, ch->trailers);
                    evbuffer_add(out, "\r\n", 2);
                }
                ch->st = PX_CH_DONE;
                return PX_PARSE_OK;
            }
            if ((n = take_line(in, line, sizeof(line))) == -2)
                return PX_PARSE_AGAIN;
            if (n <= 0 || line[0] == ' ' || line[0] == '\t')
                return PX_PARSE_BAD;
            ssize_t k = 0;
            while (k < n && tchar((unsigned char)line[k]))
                k++;
            if (k == 0 || k == n || line[k] != ':')
                return PX_PARSE_BAD;
            for (ssize_t j = k + 1; j < n; j++)
                if (((unsigned char)line[j] < 0x20 && line[j] != '\t') || line[j] == 0x7f)
                    return PX_PARSE_BAD;
            ch->trailer_bytes += (size_t)n + 2;
            if (ch->trailer_bytes > PX_CHUNK_MAX_TRAILERS)
                return PX_PARSE_BAD;
            /* Framing and routing fields are not allowed in trailers (RFC 9110 6.5.1). */
            struct px_str name = px_str_make(line, (size_t)k);
            if (px_str_ieq(name, PX_STR("content-length")) ||
                px_str_ieq(name, PX_STR("transfer-encoding")) || px_str_ieq(name, PX_STR("host")) ||
                px_str_ieq(name, PX_STR("x-daytona-authorization")))
                break;
            if (ch->trailers == NULL && (ch->trailers = evbuffer_new()) == NULL)
                return PX_PARSE_BAD;
            evbuffer_add(ch->trailers, line, (size_t)n);
            evbuffer_add(ch->trailers, "\r\n", 2);
            break;
        }
        case PX_CH_DONE: return PX_PARSE_OK;
        }
    }
}
