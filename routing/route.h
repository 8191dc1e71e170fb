/* route.h — Host and path parsing, and the route decision of SPEC 2. */
#ifndef PX_ROUTE_H
#define PX_ROUTE_H

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

/* SPEC 1: ports that always need authentication and never show the warning. */
static inline int px_port_reserved(unsigned port)
{
    return port == 22222 || port == 2280 || port == 33333;
}

/* SPEC 9: does the path (the part before '?') hold a "." or ".." segment,
 * literal or percent-encoded (%2e), possibly split by an encoded slash (%2f)
 * or a backslash? Such paths get 400. */
int px_path_has_dot_segment(struct px_str path);

/* Splits "/toolbox/{id}/{rest}" (rest may be empty or start with '/').
 * Returns 0 and fills id and rest, or -1 if path is not a toolbox path. */
int px_path_toolbox(struct px_str path, struct px_str *id, struct px_str *rest);

/* Removes every `name=...` parameter from query (the part after '?', without it)
 * byte for byte, leaving the rest untouched. Writes into out (capacity >= query.len)
 * and returns the new length. found is set when something was removed; value
 * receives the first removed value (a slice of query). */
size_t px_query_strip(struct px_str query, struct px_str name, char *out, int *found,
                      struct px_str *value);

/* The query of a request target (the part after the first '?', empty if none). */
struct px_str px_target_query(struct px_str target);

/* Finds the first `name=value` parameter in query; returns 1 and sets value (a
 * slice of query, still percent-encoded) or returns 0. */
int px_query_get(struct px_str query, struct px_str name, struct px_str *value);

#endif
