/* fuzz_h2.c — HTTP/2 frames from a client into a real server session of
 * proxy/h2.c, wired to the real request pipeline (proxy/conn.c, route.c, the
 * auth chain, the local answers): nghttp2 does the framing; our callbacks,
 * the stream's request head (build_head), the exchange it opens and the
 * answers written back as HEADERS and DATA are the target.
 *
 * Each input gets a fresh connection on a bufferevent pair: px_h2_start() has
 * one end, the driver writes the client connection preface and then the input
 * into the other, in pieces (byte 0 picks the piece size), running the event
 * loop without blocking between pieces until nothing is left to do. Whatever
 * the server writes back is read and dropped. At the end the client end is
 * closed and every connection must be gone: nothing leaks into the next input
 * (and LeakSanitizer checks the heap at exit).
 *
 * Determinism: no sockets, no timers fire (the loop never waits), lookups use
 * the in-memory store, and the runners are https:// URLs while the driver has
 * no client TLS context, so every forward fails at once with a 502 instead of
 * connecting anywhere. Timeouts and runner responses are not covered here
 * (fuzz_h1_response and fuzz_chunked cover the response parsing). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "auth/lookup.h"
#include "proxy/px.h"
#include "proxy/server.h"
#include "proxy/upstream.h"
#include "proxy/h2.h"
#include "fuzz/check.h"

/* Routes that end in a local answer: a public sandbox (502 from the failed
 * connect, or the warning page for a browser), a private one (401, the auth
 * chain: token header, query token, cookie), unknown ones (404), toolbox paths,
 * a custom domain. */
static const char conf[] = "domains proxy.test\n"
                           "access_log off\n"
                           "log_level err\n"
                           "preview_warning on\n"
                           "cookie_secret fuzz-secret\n"
                           "sandbox sb1 runner_url=https://127.0.0.1:1 runner_key=rk public=1\n"
                           "sandbox sb2 runner_url=https://127.0.0.1:1 runner_key=rk public=0 "
                           "auth_token=tok\n"
                           "domain app.example.com sb1 3000\n";

static struct px_server srv;
static struct px_config *cfg;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char err[256], path[64];
    int fd = memfd_create("fuzz-h2.conf", 0);
    (void)argc;
    (void)argv;

    CHECK(fd >= 0 && write(fd, conf, sizeof(conf) - 1) == (ssize_t)(sizeof(conf) - 1));
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    unsetenv("PROXY_PORT");
    unsetenv("REDIS_HOST");
    unsetenv("DAYTONA_API_URL");
    unsetenv("PROXY_API_KEY");
    cfg = px_config_load(path, err, sizeof(err));
    if (cfg == NULL)
        fprintf(stderr, "fuzz_h2: %s\n", err);
    CHECK(cfg != NULL);
    close(fd);
    px_log_level = PX_ERR;
    srv.cfg = cfg;
    srv.base = event_base_new();
    CHECK(srv.base != NULL);
    srv.pool = px_pool_new(&srv);
    CHECK(srv.pool != NULL);
    CHECK(px_lookup_init(srv.base, cfg) == 0);
    px_lookup_set_server(&srv);
    return 0;
}

/* Runs what is ready (deferred callbacks, pair transfers) until nothing is,
 * never waiting for a timer or a socket. */
static void settle(struct bufferevent *client)
{
    /* A few quiet rounds in a row: callbacks deferred to the next round do not
     * show as active in the round they are queued. */
    for (int i = 0, quiet = 0; i < 1000 && quiet < 4; i++) {
        event_base_loop(srv.base, EVLOOP_NONBLOCK);
        if (client != NULL) {
            struct evbuffer *in = bufferevent_get_input(client);
            evbuffer_drain(in, evbuffer_get_length(in)); /* the client reads everything */
        }
        quiet = event_base_get_num_events(srv.base, EVENT_BASE_COUNT_ACTIVE) == 0 ? quiet + 1 : 0;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    struct bufferevent *pair[2];
    struct sockaddr_in peer = {.sin_family = AF_INET, .sin_port = htons(40000)};
    size_t piece;

    if (size < 1 || size > 256 * 1024)
        return 0;
    piece = data[0] == 0 ? size : (size_t)data[0] * 8;
    data++;
    size--;
    peer.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(bufferevent_pair_new(srv.base, BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS, pair) ==
          0);
    bufferevent_enable(pair[1], EV_READ | EV_WRITE);
    /* pair[0] belongs to h2.c from here on */
    px_h2_start(&srv, pair[0], (const struct sockaddr *)&peer, 0, NULL);
    bufferevent_write(pair[1], preface, sizeof(preface) - 1);
    settle(pair[1]);
    for (size_t off = 0; off < size; off += piece) {
        size_t n = size - off < piece ? size - off : piece;
        bufferevent_write(pair[1], data + off, n);
        settle(pair[1]);
    }
    /* The client goes away: h2.c hears EOF and closes its streams, whose
     * pipeline ends then close in turn. */
    bufferevent_free(pair[1]);
    settle(NULL);
    px_conn_close_all(&srv); /* what the EOF did not end (e.g. waiting on a timer) */
    settle(NULL);
    CHECK(srv.nconns == 0 && srv.conns == NULL);
    CHECK(srv.nh2 == 0 && srv.h2s == NULL);
    CHECK(srv.nsplices == 0);
    return 0;
}
