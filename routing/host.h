/* host.h — the Host header grammar of SPEC 2: {port}-{label}.{domain}
 * previews and base hosts (routing/host.c). */
#ifndef PX_HOST_H
#define PX_HOST_H

#include "proxy/px.h"

enum px_host_kind {
    PX_HOST_BAD = -1,    /* malformed Host: answer 400 */
    PX_HOST_PREVIEW = 0, /* {port}-{label}.{domain} */
    PX_HOST_BASE,        /* anything else that is a valid host */
};

struct px_host {
    unsigned port;       /* preview only */
    struct px_str label; /* preview only; points into the caller's lowercased buffer */
    struct px_str name;  /* the host without :port, lowercased, no trailing dot */
    const char *why;     /* PX_HOST_BAD: the reason, for the 400 message */
};

/* Parses a Host value in place: buf is lowercased and the result's slices point
 * into it. domains (may be empty) restricts the preview base domains. */
enum px_host_kind px_host_parse(char *buf, size_t len, char *const *domains, int ndomains,
                                struct px_host *out);

/* Is host.name one of the configured domains (or any host when none are)? */
int px_host_is_base(const struct px_host *h, char *const *domains, int ndomains);

/* Is s 1..max bytes of [A-Za-z0-9_-], the alphabet of host labels, sandbox IDs
 * and signed tokens? Such a value goes into a URL path or a Redis key as it is. */
int px_str_is_label(struct px_str s, size_t max);

#endif
