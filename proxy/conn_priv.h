/* conn_priv.h — the connection module's private vocabulary, shared by
 * conn.c (lifetime, client I/O, local responses), route.c (routing and
 * authentication) and forward.c (the runner side). Nothing outside proxy/
 * includes it. */
#ifndef PX_CONN_PRIV_H
#define PX_CONN_PRIV_H

#include <arpa/inet.h>
#include <sys/time.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "proxy/h1.h"
#include "proxy/metrics.h"
#include "proxy/px.h"
#include "proxy/server.h"
#include "routing/host.h"

struct px_auth;
struct px_hbuf;
struct px_h2s;
struct px_lk;
struct px_sandbox;
struct px_upstream;
struct px_api_call;
struct px_oidc_op;

#define PX_HIGH_WATER (256 * 1024)
#define PX_REPLAY_MAX (256 * 1024) /* SPEC 9: retry only bodies buffered whole */
#define PX_MAX_RESP_HEAD (64 * 1024)

enum px_conn_state {
    PX_CONN_IDLE = 0, /* between requests; keepalive timer armed */
    PX_CONN_HEAD,     /* reading a request head; header timer armed */
    PX_CONN_AUTH,     /* auth lookup in flight; no timer (the lookup has its own) */
    PX_CONN_STREAM,   /* request forwarded; upstream timers on the upstream bev */
    PX_CONN_CLOSING,  /* flushing our output, then lingering, then destroy */
};

/* BODY_STREAM: an HTTP/2 request body without Content-Length, delimited by
 * END_STREAM; chunked towards the runner (raw in a tunnel). */
enum body_kind { BODY_NONE = 0, BODY_LENGTH, BODY_CHUNKED, BODY_EOF, BODY_STREAM };

/* The runner side of an exchange (REVIEW change 3). forward.c's
 * up_set_state() is the only place that arms the runner connection's
 * timeouts; each state says which:
 *   NONE       no runner connection yet (HEAD, AUTH, local answers); up NULL
 *   CONNECT    connect (and TLS handshake) in flight, also after a retry; the
 *              head, maybe body bytes, wait in up's output. write slot:
 *              connect_timeout; read slot: response_header_timeout once the
 *              request is whole
 *   SEND       connected, request body still arriving. write slot: send_timeout
 *              (a runner that stops reading); no read timeout
 *   WAIT_HEAD  request sent whole, no response head yet. read slot:
 *              response_header_timeout, from the end of the request (SPEC 9)
 *   BODY       response head relayed, body (or an HTTP/2 tunnel) streaming.
 *              read slot: ws_idle_timeout (SSE may idle long); write slot:
 *              send_timeout while the request still comes; the connection
 *              timer ticks activity
 *   DONE       response complete; up released (pooled or closed), NULL
 * Under backpressure the runner's reading is paused and its read timeout with
 * it; the client's send_timeout bounds that wait instead. */
enum px_up_state {
    PX_UP_NONE = 0,
    PX_UP_CONNECT,
    PX_UP_SEND,
    PX_UP_WAIT_HEAD,
    PX_UP_BODY,
    PX_UP_DONE
};

/* One request and its response (issue 13): all the state that must not
 * outlive an exchange on a keep-alive connection. A new exchange starts from
 * (struct px_exchange){0}: nothing of the last one's Host, timings or
 * credentials can leak into it. */
struct px_exchange {
    struct px_head req; /* owned */
    int have_req;
    unsigned logged : 1; /* its access log line is written (px_conn_access_log) */
    char reqid[24];
    struct timeval t_start, t_upstream;
    char loghost[80];        /* redacted host for the access log */
    char host[256];          /* lowercased Host; the auth label points into it */
    struct px_str label;     /* slice of host (or of req.buf for toolbox) */
    struct px_str authority; /* the routed authority as received: absolute-form target, else Host */
    char *set_cookie;        /* owned; a full Set-Cookie line for the response, or NULL */
    struct px_str path;      /* slice of req.buf: path+query as received */
    struct px_auth *auth;    /* owned by auth/; we only cancel it */
    struct px_lk *dom_lk;    /* owned by lookup.c; custom-domain lookup, we only cancel it */
    struct px_lk *warn_lk;   /* owned by lookup.c; API mode's warning decision (C13) */
    struct px_api_call *api_call; /* owned; a build-log route's API call in flight */
    struct px_oidc_op *oidc;      /* owned by auth/oidc.c; we only cancel it */
    char build_kind;              /* build logs: 's' sandbox, 'n' snapshot */
    char *build_ref;              /* owned; the snapshot ref of a build-log route */
    char *fwd_target;             /* owned; a target sent as it is (build logs), or NULL */
    int wake_status;              /* wake.c: the failure to answer if the sandbox is awake */
    const char *wake_message;     /* static */
    char dom_sandbox[256];        /* the sandbox a custom domain names; the label points here */
    struct px_host hinfo;         /* the parsed Host; slices into host */
    struct px_sandbox *sb;        /* owned; the resolved sandbox */
    unsigned port;                /* preview port */
    unsigned char route_kind;     /* enum px_route_kind (metrics.h); route.c sets it */
    unsigned toolbox : 1;
    unsigned drop_authorization : 1;
    struct px_str toolbox_rest; /* slice of req.buf */
    struct px_str query_token;  /* slice of req.buf */
    unsigned has_query_token : 1;
    unsigned file_url : 1; /* a signed file URL (SPEC 4.7): signature, expires not forwarded */

    enum body_kind req_body;
    int64_t req_left; /* BODY_LENGTH: bytes still to read */
    struct px_chunked req_ch;
    unsigned req_done : 1;  /* whole request body read from the client */
    unsigned keepalive : 1; /* keep the client connection after this exchange */

    struct px_upstream *up;  /* owned; NULL until forwarded */
    struct evbuffer *replay; /* owned; bytes sent on a reused connection, for one retry */
    unsigned retried : 1;
    unsigned resp_seen : 1; /* any response byte came back */
    unsigned tunnel : 1;    /* HTTP/2 WebSocket (RFC 8441) after the runner's 101: bytes
                             * pass both ways unframed until either side ends */

    enum px_up_state up_st;
    struct px_head resp; /* owned */
    enum body_kind resp_body;
    int64_t resp_left;
    struct px_chunked resp_ch;
    unsigned resp_chunk_out : 1; /* we chunk an EOF-delimited body for the client */
    unsigned up_reusable : 1;
    unsigned no_activity : 1; /* X-Daytona-Skip-Last-Activity-Update: true */
    int status;               /* status sent to the client, 0 before */
    uint64_t bytes_out;       /* response body bytes sent */
    uint64_t req_bytes;       /* request body bytes forwarded */
    uint64_t progress_seen;   /* bytes_out + req_bytes at the last activity tick */
};

struct px_conn {
    uint64_t id; /* for logs; never reused */
    enum px_conn_state state;
    struct px_server *srv;     /* borrowed; outlives us */
    struct bufferevent *bev;   /* owned; frees the fd. NULL for an HTTP/2 stream */
    struct px_h2s *h2s;        /* borrowed: the HTTP/2 stream this exchange answers (both
                                * unlink when either ends: proxy/h2.c), else NULL */
    struct event *timer;       /* owned; keepalive / header timer */
    struct px_peer *peer_slot; /* owned; the socket's count in peers.c (NULL for HTTP/2
                                * streams and uncounted peers); moves with the socket */
    char peer_ip[INET6_ADDRSTRLEN];
    struct sockaddr_storage peer;
    unsigned tls : 1;       /* the client reached us over TLS */
    unsigned h2_stream : 1; /* one HTTP/2 stream's exchange (proxy/h2.c) */
    unsigned nreq;          /* requests seen on this connection */
    unsigned peer_trusted : 1;
    unsigned busy;               /* >0 while our frames are on the stack */
    unsigned doomed : 1;         /* destroy as soon as busy == 0 */
    unsigned lingering : 1;      /* CLOSING, output sent and FIN'd: discarding input */
    unsigned linger_short : 1;   /* the head timed out: linger LINGER_AFTER_HEAD_TIMEOUT at most */
    unsigned close_asked : 1;    /* the last request asked to close and was read whole */
    unsigned out_paused : 1;     /* IDLE with over PX_HIGH_WATER unsent: not reading (issue 9) */
    time_t linger_until;         /* lingering ends by then at the latest */
    struct px_conn *next, *prev; /* srv->conns */

    /* The current exchange: everything below is reset whole, in one
     * assignment, by exchange_reset() once what it owns is released. */
    struct px_exchange ex;
};

#define clog(c, lvl, ...)                                                                          \
    do {                                                                                           \
        if ((lvl) <= px_log_level) {                                                               \
            char ctx_[160];                                                                        \
            snprintf(ctx_, sizeof(ctx_), "conn=%llu st=%s host=%s", (unsigned long long)(c)->id,   \
                     px_conn_state_name((c)->state), (c)->ex.loghost[0] ? (c)->ex.loghost : "-");  \
            px_logf((lvl), ctx_, __VA_ARGS__);                                                     \
        }                                                                                          \
    } while (0)

/* conn.c
 *
 * How an exchange ends (REVIEW change 2). "c may be gone" means the caller
 * returns at once without touching c (the `return f(c);` idiom, STYLE 8):
 *   px_conn_exchange_done  the response is complete: log, then keep-alive or linger
 *   px_conn_respond/_fail  a local answer; ends the exchange through exchange_done
 *   px_conn_fail_close     the request cannot be framed: answer, then close
 *   px_conn_abort          anything else that cannot finish
 *   px_conn_close          the connection goes, without a log line (tunnels,
 *                          a head that never came, after abort) */

/* For logs: the state's name. */
const char *px_conn_state_name(enum px_conn_state st);
/* Changes state (logged at debug); arms nothing. */
void px_conn_set_state(struct px_conn *c, enum px_conn_state next);
/* (Re)arms the connection timer (timer_cb acts on the state it finds). */
void px_conn_arm_timer(struct px_conn *c, int seconds);
/* Closes the runner connection of the exchange, if any (never pooled: a
 * connection released here is mid-exchange). c survives. */
void px_conn_upstream_drop(struct px_conn *c);
/* Frees the connection now. Only when no callback of c is on the stack:
 * everything else calls px_conn_close(). */
void px_conn_destroy(struct px_conn *c);
/* Safe at any depth (STYLE 8): destroys now, or when the callbacks unwind.
 * No log line. c may be gone. */
void px_conn_close(struct px_conn *c);
/* Stops reading, flushes what was written, shuts the write side and discards
 * input for a bounded time, then destroys (RFC 9112 9.6). c survives until
 * then; the timer is re-armed. */
void px_conn_linger(struct px_conn *c);
/* Ends an exchange that cannot finish: drops the runner connection; with a
 * status and nothing sent yet answers that error (px_conn_fail, keep-alive
 * only if the request body was read whole), else logs once (499 if nothing
 * was sent) and closes. c may be gone. */
void px_conn_abort(struct px_conn *c, int status, const char *why);
/* Writes the exchange's access log line and counts it in the metrics, once
 * per exchange (ex.logged). c survives. */
void px_conn_access_log(struct px_conn *c);
/* Does the client prefer HTML (a browser) for our own error answers? */
int px_conn_wants_html(const struct px_conn *c);
/* A complete response of our own, body copied (may be NULL), extra_headers
 * whole CRLF-terminated lines or NULL; ends the exchange. The connection is
 * kept only if the request body was read whole and the client wants it kept.
 * c may be gone. */
void px_conn_respond(struct px_conn *c, int status, const char *ctype, struct evbuffer *body,
                     const char *extra_headers);
/* The CORS preflight answer (204, no body; SPEC 7); as px_conn_respond. */
void px_conn_respond_preflight(struct px_conn *c);
/* Where the request body comes from and the response body goes: the
 * socket's buffers for HTTP/1.1, the stream's for HTTP/2. */
struct evbuffer *px_conn_in(struct px_conn *c);
struct evbuffer *px_conn_out(struct px_conn *c);
/* Bytes were added to px_conn_out() (HTTP/2: send them). */
void px_conn_wrote(struct px_conn *c);
/* A response head for the exchange's front end: begin sets w up (hb is the
 * HTTP/1.1 builder, on the caller's stack), end hands it over: the bytes to
 * the socket, or HEADERS to the stream (has_body: DATA follows from
 * px_conn_out(); without, the stream ends with the head). */
struct px_headw;
void px_conn_head_begin(struct px_conn *c, struct px_headw *w, struct px_hbuf *hb);
void px_conn_head_end(struct px_conn *c, struct px_headw *w, int has_body);
/* The JSON or HTML error answer (SPEC 10) with an optional code and message;
 * 5xx are logged (rate-limited). As px_conn_respond. c may be gone. */
void px_conn_fail(struct px_conn *c, int status, const char *code, const char *message);
/* A request we cannot even frame: answer and close, nothing is forwarded.
 * c may be gone. */
void px_conn_fail_close(struct px_conn *c, int status, const char *message);
/* Sets ex.loghost, the redacted host for logs: a signed-token label never
 * appears (SPEC 11); label_is_id says the label is a sandbox ID. */
void px_conn_loghost(struct px_conn *c, const struct px_host *h, int label_is_id);
/* The response is complete: access log, runner connection released, the
 * exchange reset; then IDLE with the keep-alive timer, or linger. The caller
 * loops (LEAVE) for a pipelined request. c survives. */
void px_conn_exchange_done(struct px_conn *c);
/* Moves the connection on with what its input holds, by state; loops over
 * pipelined requests answered locally (at most 64 per call). c may be gone. */
void px_conn_step(struct px_conn *c);
/* p without its query. */
struct px_str px_path_only(struct px_str p);

/* buildlogs.c: API mode's GET /sandboxes|snapshots/{id}/build-logs (DAYTONA-API.md
 * §8). Returns 1 when path is one and the exchange is under way, else 0. */
int px_build_logs(struct px_conn *c, struct px_str path_only);

/* wake.c: the runner could not be reached. In API mode asks the API whether
 * the sandbox sleeps (C8) and wakes it (C11), answering "starting"; otherwise,
 * or when it is awake, fails the exchange with status and message (static). */
void px_wake_or_fail(struct px_conn *c, int status, const char *message);

/* route.c: called once the request head is parsed */
void px_route_request(struct px_conn *c);

/* forward.c */
/* The exchange is routed and authorized (ex.sb set): connects (or takes a
 * pooled connection), sends the head, enters STREAM. On failure answers 403
 * or 502 itself. c may be gone. */
void px_fwd_start(struct px_conn *c);
/* Moves request body bytes from the client to the runner, with backpressure
 * both ways; ends the exchange on a bad or oversized body. c may be gone. */
void px_fwd_pump_request(struct px_conn *c);
/* Runner bytes arrived: reads the response head, then pumps the body to the
 * client; ends the exchange when the response is complete. c may be gone. */
void px_fwd_on_response(struct px_conn *c);
/* 503 "the sandbox is starting" (page or JSON), Retry-After: 5 (SPEC 10). */
void px_fwd_starting(struct px_conn *c);
/* Header filtering (SPEC 9), exported for the unit tests: hop-by-hop fields
 * (RFC 9110 7.6.1, including those Connection names), the fields the proxy
 * consumes or sets itself, and the Cookie line without the proxy's cookies. */
int px_fwd_hop_by_hop(struct px_str name, struct px_str conn_value);
int px_fwd_consumed(struct px_str name, int drop_authorization);
void px_fwd_add_cookie(struct px_hbuf *out, struct px_str v);
/* Does a runner's Set-Cookie value name one of the proxy's own cookies? */
int px_fwd_proxy_cookie(struct px_str set_cookie_value);

#define ENTER(c) ((c)->busy++)
/* Leaving a callback: a finished exchange may leave a pipelined request waiting. */
#define LEAVE(c)                                                                                   \
    do {                                                                                           \
        if ((c)->busy == 1 && !(c)->doomed && (c)->state == PX_CONN_IDLE && (c)->bev != NULL &&    \
            evbuffer_get_length(bufferevent_get_input((c)->bev)) > 0)                              \
            px_conn_step(c);                                                                       \
        if (--(c)->busy == 0 && (c)->doomed)                                                       \
            px_conn_destroy(c);                                                                    \
    } while (0)

#endif
