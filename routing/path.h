/* path.h — request paths and queries: dot segments (SPEC 9), the toolbox
 * route, and the query parameters the proxy reads or consumes
 * (routing/path.c). */
#ifndef PX_PATH_H
#define PX_PATH_H

#include "proxy/px.h"

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
