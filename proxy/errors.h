/* errors.h — error bodies of SPEC 10: JSON for API clients, a small HTML page
 * for browsers, with the same facts and the request ID. */
#ifndef PX_ERRORS_H
#define PX_ERRORS_H

#include <event2/buffer.h>

#include "proxy/px.h"

struct px_error {
    int status;
    const char *code;    /* e.g. "BAD_REQUEST", static */
    const char *message; /* safe to show; never holds a secret */
};

/* Standard reason phrase for a status code. */
const char *px_status_text(int status);

/* Default machine-readable code for a status (SPEC 10). */
const char *px_status_code(int status);

/* Appends the body to out and returns its content type. method/path are echoed
 * (escaped); path must already have secrets removed. */
const char *px_error_body(const struct px_config *cfg, struct evbuffer *out,
                          const struct px_error *e, struct px_str method, struct px_str path,
                          const char *request_id, int html);

/* The "sandbox is starting" page (SPEC 10, wake-on-request): refreshes itself. */
void px_starting_page(struct evbuffer *out, const char *request_id);

/* Appends s to out escaped for JSON strings / HTML text. */
void px_json_escape(struct evbuffer *out, struct px_str s);
void px_html_escape(struct evbuffer *out, struct px_str s);

#endif
