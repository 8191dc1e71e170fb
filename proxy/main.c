/* main.c — command line, process model and signals.
 *
 * `preview-proxy -c FILE` serves; `-t` only checks the file. With `workers N`
 * (N > 1) the master forks N workers that each bind the listeners with
 * SO_REUSEPORT and run their own event loop; the master only relays signals
 * and reaps. SIGTERM/SIGINT drain, SIGHUP reloads the configuration, SIGUSR1
 * reopens the log files. Under systemd (Type=notify) the process systemd
 * started reports READY, RELOADING and STOPPING. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <arpa/inet.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/dns.h>
#include <event2/event.h>
#include <event2/listener.h>

#include <openssl/rand.h>

#include <systemd/sd-daemon.h>

#include "auth/activity.h"
#include "auth/lookup.h"
#include "auth/oidc.h"
#include "tls/tls.h"
#include "proxy/conn_priv.h"
#include "proxy/metrics.h"
#include "proxy/peers.h"
#include "proxy/ppaccept.h"
#include "proxy/api.h"
#include "proxy/px.h"
#include "proxy/server.h"
#include "proxy/upstream.h"

struct px_server *px_srv;

static struct evconnlistener *listeners[PX_MAX_LISTEN];
static int nlisteners;
static struct evconnlistener *metrics_listener; /* NULL without metrics_listen */
static struct event *accept_timer;              /* armed while accepting is paused */
static struct event *shutdown_timer;
static struct px_tls
    *tls_sets[64]; /* every certificate set loaded; handshakes may borrow old ones */
static int ntls_sets;
static struct px_config
    *configs[64]; /* every config ever loaded; connections may borrow old ones */
static int nconfigs;
/* The log files opened at start, reopened by name on SIGUSR1. They point into
 * configs[0], which lives as long as the process; a reload does not move logs. */
static const char *error_log_path = "stderr";
static const char *access_log_path = "off";

static void usage(void)
{
    fprintf(stderr, "usage: preview-proxy [-t] [-c proxy.conf]\n"
                    "  -c FILE  configuration file (default proxy.conf)\n"
                    "  -t       check the configuration and exit (0 good, 1 bad)\n");
}

/* ---- telling systemd how we are (Type=notify) ----
 *
 * systemd listens to the process it started: the only one with `workers 1`,
 * else the master. That one sends READY=1 once the listeners accept (a master:
 * once every worker has written a byte to ready_pipe, which workers also do
 * after each reload), RELOADING=1 on SIGHUP then READY=1 when the reload is
 * done, STOPPING=1 when told to stop. Without NOTIFY_SOCKET sd_notify() does
 * nothing, so this costs nothing outside systemd. */
static int ready_pipe[2] = {-1, -1}; /* the master's; non-blocking both ends */
static int report_fd = -1;           /* a worker's write end of ready_pipe, else -1 */

static void notify(const char *state)
{
    if (report_fd == -1) {
        sd_notify(0, state);
    } else if (!strcmp(state, "READY=1")) {
        ssize_t n = write(report_fd, "r", 1); /* the master counts; a full pipe cannot be */
        (void)n;
    }
}

static void notify_reloading(void)
{
    struct timespec ts;

    if (report_fd != -1)
        return;
    /* MONOTONIC_USEC tells systemd which reload this is (sd_notify(3)). */
    clock_gettime(CLOCK_MONOTONIC, &ts);
    sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu",
               (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000);
}

/* fopen(3)'s "e": the descriptor is not inherited by anything we exec. */
static FILE *open_access_log(const char *path)
{
    FILE *f = fopen(path, "ae");

    if (f != NULL)
        setvbuf(f, NULL, _IOLBF, 0);
    return f;
}

struct listener_arg {
    struct px_server *srv;
    int tls;
    int proxy_protocol; /* sockets go to ppaccept.c for their PROXY header first */
};
static struct listener_arg listener_args[PX_MAX_LISTEN];

/* ---- accept pausing ----
 *
 * Accepting stops for two reasons, and in both the listening sockets are just
 * not read for a while: new clients complete the TCP handshake and wait in the
 * kernel's listen backlog, neither refused nor reset, as with nginx's
 * worker_connections and HAProxy's maxconn.
 *
 *  - The accept that reaches the connection limit (max_connections, lowered
 *    to what RLIMIT_NOFILE allows) pauses. conn.c, proxy/h2.c and ws/splice.c
 *    free sockets without telling us, so a timer counts again every
 *    RECHECK_MS and resumes as soon as the count is below the limit.
 *  - accept() failed (EMFILE, ENFILE, ENOBUFS, ENOMEM...). The connection stays
 *    in the backlog and the socket readable, so libevent would call accept()
 *    again at once, forever: 100 % CPU and 600,000 log lines in 2 s (issue 9,
 *    item 5). Retry after a pause that doubles from BACKOFF_MIN_MS to
 *    BACKOFF_MAX_MS and starts over once an accept succeeds. The metrics
 *    listener, which shares the fd table, pauses with the others.
 *
 * Each reason logs its pause at most once per PAUSE_LOG_EVERY seconds, with the
 * number of pauses left unlogged in between. */
#define RECHECK_MS 50
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 1600
#define PAUSE_LOG_EVERY 5
#define FD_SLACK 16 /* descriptors opened later: Redis reconnects, DNS, idle runner conns */

static int backoff_ms; /* 0 after a successful accept */
static unsigned long rlim_nofile;
static long fd_reserved; /* descriptors open at start, plus FD_SLACK */
static time_t pause_logged[3];
static unsigned long pause_unlogged[3];

static unsigned long conn_limit(const struct px_server *srv)
{
    unsigned long lim = (unsigned long)srv->cfg->max_connections;

    return srv->fd_cap != 0 && srv->fd_cap < lim ? srv->fd_cap : lim;
}

/* Is the process holding as many client sockets as it may? Those are HTTP/1
 * connections (plain or TLS, including lingering ones), HTTP/2 connections and
 * WebSocket tunnels. HTTP/2 streams (WebSockets over HTTP/2 included) are
 * px_conns too, but without a socket of their own: not counted. The sum is an
 * upper bound, so
 * the connection list is walked only near the limit, and only until the count
 * drops below it. */
static int at_limit(const struct px_server *srv)
{
    /* (Sockets still waiting for a PROXY header count too: ppaccept.c.) */
    unsigned long lim = conn_limit(srv),
                  n = srv->nconns + srv->nh2 + srv->nsplices + px_ppaccept_pending();

    for (const struct px_conn *c = srv->conns; c != NULL && n >= lim; c = c->next)
        if (c->h2_stream)
            n--;
    return n >= lim;
}

static void listeners_set(int on, int with_metrics)
{
    for (int i = 0; i < nlisteners; i++)
        (void)(on ? evconnlistener_enable(listeners[i]) : evconnlistener_disable(listeners[i]));
    if (with_metrics && metrics_listener != NULL)
        (void)(on ? evconnlistener_enable(metrics_listener)
                  : evconnlistener_disable(metrics_listener));
}

/* why is PX_PAUSED_LIMIT, or PX_PAUSED_ERROR with err the accept() errno. */
static void pause_accepting(struct px_server *srv, enum px_accept_state why, int err)
{
    struct timeval tv;
    int ms;
    time_t now = time(NULL);

    if (why == PX_PAUSED_LIMIT) {
        ms = RECHECK_MS;
        srv->pauses_limit++;
    } else {
        backoff_ms = backoff_ms == 0                   ? BACKOFF_MIN_MS
                     : backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS
                                                       : backoff_ms * 2;
        ms = backoff_ms;
        srv->pauses_error++;
    }
    listeners_set(0, why == PX_PAUSED_ERROR);
    srv->accept_paused = why;
    tv.tv_sec = ms / 1000;
    tv.tv_usec = (ms % 1000) * 1000;
    evtimer_add(accept_timer, &tv);

    if (now - pause_logged[why] < PAUSE_LOG_EVERY) {
        pause_unlogged[why]++;
        return;
    }
    char quiet[64] = "";
    if (pause_unlogged[why] > 0)
        snprintf(quiet, sizeof(quiet), " (%lu such pauses not logged)", pause_unlogged[why]);
    if (why == PX_PAUSED_LIMIT)
        px_log(PX_WARN,
               "%lu client connections (max_connections %d%s): not accepting until one closes; "
               "new clients wait in the listen backlog%s",
               conn_limit(srv), srv->cfg->max_connections,
               conn_limit(srv) < (unsigned long)srv->cfg->max_connections
                   ? ", lowered to fit RLIMIT_NOFILE"
                   : "",
               quiet);
    else
        px_log(PX_WARN, "accept failed: %s; not accepting for %d ms%s", strerror(err), ms, quiet);
    pause_logged[why] = now;
    pause_unlogged[why] = 0;
}

static void on_accept_timer(evutil_socket_t fd, short what, void *arg)
{
    struct px_server *srv = arg;
    (void)fd;
    (void)what;

    if (srv->draining) { /* the listeners are closed; only metrics may be paused */
        listeners_set(1, 1);
        srv->accept_paused = PX_ACCEPTING;
        return;
    }
    if (at_limit(srv)) {
        if (srv->accept_paused == PX_PAUSED_ERROR && metrics_listener != NULL)
            evconnlistener_enable(metrics_listener);
        srv->accept_paused = PX_PAUSED_LIMIT;
        struct timeval tv = {0, RECHECK_MS * 1000};
        evtimer_add(accept_timer, &tv);
        return;
    }
    /* After an error this is the retry: if accept() fails again, on_accept_error
     * pauses for twice as long. */
    srv->accept_paused = PX_ACCEPTING;
    listeners_set(1, 1);
}

/* max_connections_per_ip: the address holds its share already. A plain
 * listener gets a best-effort 429 (nginx's limit_conn answers 503 after reading
 * the request; the socket is refused before any byte is read here); TLS clients
 * just see the connection close. Logged at most once per PAUSE_LOG_EVERY. */
static void refuse_peer(struct listener_arg *la, evutil_socket_t fd, const struct sockaddr *sa)
{
    static const char answer[] =
        "HTTP/1.1 429 Too Many Requests\r\nServer: preview-proxy\r\n"
        "Content-Type: text/plain\r\nContent-Length: 39\r\n"
        "Connection: close\r\n\r\ntoo many connections from your address\n";
    static time_t logged;
    static unsigned long unlogged;
    time_t now = time(NULL);

    if (!la->tls) {
        ssize_t n = send(fd, answer, sizeof(answer) - 1, MSG_DONTWAIT | MSG_NOSIGNAL);
        (void)n;
        shutdown(fd, SHUT_WR);
    }
    evutil_closesocket(fd);
    if (now - logged < PAUSE_LOG_EVERY) {
        unlogged++;
        return;
    }
    char ip[INET6_ADDRSTRLEN] = "?";
    const void *a = sa->sa_family == AF_INET6
                        ? (const void *)&((const struct sockaddr_in6 *)sa)->sin6_addr
                        : (const void *)&((const struct sockaddr_in *)sa)->sin_addr;
    inet_ntop(sa->sa_family, a, ip, sizeof(ip));
    px_log(PX_WARN, "refused a connection from %s: it holds max_connections_per_ip (%d)%s", ip,
           la->srv->cfg->max_connections_per_ip, unlogged ? " (more refusals not logged)" : "");
    logged = now;
    unlogged = 0;
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen,
                      void *arg)
{
    (void)l;
    struct listener_arg *la = arg;
    struct px_peer *slot;

    if (la->proxy_protocol) {
        /* The peer is a balancer (trusted, never counted per IP); ppaccept.c
         * reads the header and charges max_connections_per_ip to the client
         * it names. */
        px_ppaccept_start(la->srv, fd, sa, salen, la->tls);
    } else {
        if (px_peer_take(la->srv, sa, &slot) != 0)
            return refuse_peer(la, fd, sa);
        px_conn_accept(la->srv, fd, sa, salen, la->tls, slot);
    }
    backoff_ms = 0;
    /* Disabling the listener from here makes libevent stop its accept loop. */
    if (at_limit(la->srv))
        pause_accepting(la->srv, PX_PAUSED_LIMIT, 0);
}

/* For the proxy's listeners and the metrics listener. */
static void on_accept_error(struct evconnlistener *l, void *arg)
{
    int err = EVUTIL_SOCKET_ERROR();
    (void)l;
    (void)arg;
    pause_accepting(px_srv, PX_PAUSED_ERROR, err);
}

/* How many client sockets RLIMIT_NOFILE leaves room for: each connection can
 * hold two descriptors (its own and a runner's), after those open now and
 * FD_SLACK. 0 when the limit is infinite. nginx warns likewise when
 * worker_connections exceed the limit; we also lower the limit, since running
 * out of descriptors fails runner connections too, not only accepts. */
static unsigned long fd_cap(void)
{
    struct rlimit rl;
    long open_now = 0, spare;
    DIR *d;

    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY)
        return 0;
    rlim_nofile = (unsigned long)rl.rlim_cur;
    if ((d = opendir("/proc/self/fd")) != NULL) {
        while (readdir(d) != NULL)
            open_now++;
        closedir(d);
        open_now -= 3; /* ".", ".." and the directory's own descriptor */
    } else {
        open_now = FD_SLACK;
    }
    fd_reserved = open_now + FD_SLACK;
    spare = (long)rl.rlim_cur - fd_reserved;
    return spare >= 4 ? (unsigned long)spare / 2 : 1;
}

static void warn_fd_cap(const struct px_server *srv)
{
    /* The default is lowered quietly (INFO); a value someone wrote, with a warning. */
    if (srv->fd_cap != 0 && srv->fd_cap < (unsigned long)srv->cfg->max_connections)
        px_log(srv->cfg->max_connections_set ? PX_WARN : PX_INFO,
               "max_connections %d needs up to %ld file descriptors but RLIMIT_NOFILE is %lu: "
               "this process accepts at most %lu connections (raise ulimit -n)",
               srv->cfg->max_connections, 2L * srv->cfg->max_connections + fd_reserved, rlim_nofile,
               srv->fd_cap);
}

/* ---- binary upgrade: handing the listening sockets over (SIGUSR2) ----
 *
 * A second instance that binds the same port with SO_REUSEPORT gets its own
 * listening socket and its own accept queue; when the old one closes its
 * socket, the kernel resets every connection still waiting in that queue (and
 * the handshakes in progress on it). So an upgrade passes the sockets
 * themselves, as nginx's binary upgrade does: on SIGUSR2 the process forks and
 * execs its own binary (the path it was started from, which a package upgrade
 * has replaced) with the listening descriptors open and their numbers in
 * PREVIEW_PROXY_LISTEN_FDS. The new process uses an inherited socket for each
 * `listen` whose address matches and binds the rest. Both processes then
 * accept from the same queues; SIGTERM to the old one closes only its copies,
 * so nothing queued is lost. Only with `workers 1` (the master holds no
 * sockets to pass); with more workers SIGUSR2 is refused with a warning. */
#define LISTEN_FDS_ENV "PREVIEW_PROXY_LISTEN_FDS"

static int inherited[PX_MAX_LISTEN]; /* listening sockets from the old process, -1 once used */
static int ninherited;
static char self_exe[4096]; /* our binary, resolved at start (a package upgrade replaces it) */
static char **self_argv;

/* Takes the sockets named in LISTEN_FDS_ENV; anything that is not a listening
 * TCP socket is ignored. Before any other descriptor is opened. */
static void take_inherited(void)
{
    const char *v = getenv(LISTEN_FDS_ENV);
    char *end;

    for (; v != NULL && *v != '\0' && ninherited < PX_MAX_LISTEN; v = *end ? end + 1 : end) {
        long fd = strtol(v, &end, 10);
        int on = 0;
        socklen_t len = sizeof(on);
        if (end == v || (*end != ',' && *end != '\0'))
            break;
        if (fd < 3 || fd > 65535 ||
            getsockopt((int)fd, SOL_SOCKET, SO_ACCEPTCONN, &on, &len) != 0 || !on)
            continue;
        fcntl((int)fd, F_SETFD, FD_CLOEXEC);
        inherited[ninherited++] = (int)fd;
    }
    unsetenv(LISTEN_FDS_ENV);
}

/* An inherited socket bound to sa, or -1. */
static int inherited_fd(const struct sockaddr *sa, socklen_t salen)
{
    for (int i = 0; i < ninherited; i++) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        if (inherited[i] < 0 || getsockname(inherited[i], (struct sockaddr *)&ss, &len) != 0)
            continue;
        if (len == salen && !memcmp(&ss, sa, salen)) {
            int fd = inherited[i];
            inherited[i] = -1;
            return fd;
        }
    }
    return -1;
}

static int open_listeners(struct px_server *srv)
{
    const struct px_config *cfg = srv->cfg;
    int kept = 0;

    for (int i = 0; i < cfg->nlisten; i++) {
        const struct sockaddr *sa = (const struct sockaddr *)&cfg->listen[i].addr;
        int fd = inherited_fd(sa, (socklen_t)cfg->listen[i].addrlen);
        listener_args[i].srv = srv;
        listener_args[i].tls = cfg->listen[i].tls;
        listener_args[i].proxy_protocol = cfg->listen[i].proxy_protocol;
        if (fd >= 0 && evutil_make_socket_nonblocking(fd) == 0) {
            /* backlog 0: already listening, keep its queue as it is */
            listeners[i] = evconnlistener_new(srv->base, on_accept, &listener_args[i],
                                              LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 0, fd);
            kept += listeners[i] != NULL;
        } else {
            listeners[i] =
                evconnlistener_new_bind(srv->base, on_accept, &listener_args[i],
                                        LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE |
                                            LEV_OPT_REUSEABLE_PORT | LEV_OPT_CLOSE_ON_EXEC,
                                        1024, sa, (int)cfg->listen[i].addrlen);
        }
        if (listeners[i] == NULL) {
            px_log(PX_ERR, "cannot listen on listener %d: %s", i, strerror(errno));
            return -1;
        }
        evconnlistener_set_error_cb(listeners[i], on_accept_error);
        nlisteners++;
    }
    for (int i = 0; i < ninherited; i++) /* listeners the new configuration dropped */
        if (inherited[i] >= 0)
            close(inherited[i]);
    if (ninherited > 0)
        px_log(PX_INFO,
               "binary upgrade: %d of %d listening sockets taken over from the old process", kept,
               ninherited);
    ninherited = 0;
    return 0;
}

/* SIGUSR2: start the new binary beside us with our listening sockets. */
static void on_usr2(evutil_socket_t sig, short what, void *arg)
{
    struct px_server *srv = arg;
    char list[PX_MAX_LISTEN * 12] = "";
    size_t n = 0;
    (void)sig;
    (void)what;

    if (report_fd != -1 || srv->draining || nlisteners == 0 || self_exe[0] == '\0') {
        px_log(PX_WARN, "SIGUSR2: no binary upgrade (%s)",
               report_fd != -1 ? "it needs workers 1"
               : srv->draining ? "draining"
               : self_exe[0]   ? "no listeners"
                               : "own path unknown");
        return;
    }
    for (int i = 0; i < nlisteners; i++)
        n += (size_t)snprintf(list + n, sizeof(list) - n, "%s%d", i ? "," : "",
                              (int)evconnlistener_get_fd(listeners[i]));
    pid_t p = fork();
    if (p == 0) {
        /* The new process gets stdin/out/err and the listening sockets, nothing
         * else: an inherited runner or Redis socket would stay open after we
         * close it (no EOF for the peer). Most of ours are O_CLOEXEC already. */
        int keep[PX_MAX_LISTEN] = {0};
        for (int i = 0; i < nlisteners; i++) {
            keep[i] = (int)evconnlistener_get_fd(listeners[i]);
            fcntl(keep[i], F_SETFD, 0);
        }
        long max = sysconf(_SC_OPEN_MAX);
        DIR *d = opendir("/proc/self/fd");
        struct dirent *e;
        int dfd = d != NULL ? dirfd(d) : -1;
        while (d != NULL && (e = readdir(d)) != NULL) {
            int fd = atoi(e->d_name), kept = fd < 3 || fd == dfd;
            for (int i = 0; i < nlisteners && !kept; i++)
                kept = fd == keep[i];
            if (!kept && e->d_name[0] != '.')
                fcntl(fd, F_SETFD, FD_CLOEXEC); /* closed by execv, not under readdir */
        }
        if (d != NULL)
            closedir(d);
        else
            for (int fd = 3; fd < max && fd < 65536; fd++)
                fcntl(fd, F_SETFD, FD_CLOEXEC);
        for (int i = 0; i < nlisteners; i++)
            fcntl(keep[i], F_SETFD, 0);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        setenv(LISTEN_FDS_ENV, list, 1);
        execv(self_exe, self_argv);
        _exit(127);
    }
    if (p < 0)
        px_log(PX_WARN, "SIGUSR2: fork: %s", strerror(errno));
    else
        px_log(PX_INFO,
               "SIGUSR2: started %s as pid %d with listening sockets %s; SIGTERM pid %u once "
               "it serves",
               self_exe, (int)p, list, srv->pid);
}

static void close_listeners(void)
{
    for (int i = 0; i < nlisteners; i++)
        evconnlistener_free(listeners[i]);
    nlisteners = 0;
}

static void on_shutdown_deadline(evutil_socket_t fd, short what, void *arg)
{
    struct px_server *srv = arg;
    (void)fd;
    (void)what;
    px_log(PX_INFO, "shutdown_timeout reached with %lu connections open: closing them",
           srv->nconns);
    px_conn_close_all(srv);
    event_base_loopexit(srv->base, NULL);
}

static void on_term(evutil_socket_t sig, short what, void *arg)
{
    struct px_server *srv = arg;
    (void)what;

    if (srv->draining) { /* a second signal forces the exit */
        px_conn_close_all(srv);
        event_base_loopexit(srv->base, NULL);
        return;
    }
    notify("STOPPING=1");
    px_log(PX_INFO, "signal %d: draining %lu connections (up to %d s)", (int)sig, srv->nconns,
           srv->cfg->shutdown_timeout);
    close_listeners();
    px_ppaccept_close_all(); /* no request started on those yet */
    struct timeval tv = {srv->cfg->shutdown_timeout, 0};
    shutdown_timer = evtimer_new(srv->base, on_shutdown_deadline, srv);
    evtimer_add(shutdown_timer, &tv);
    px_conn_drain_all(srv);
}

static void reload(struct px_server *srv)
{
    char err[512];
    struct px_config *cfg;

    if (nconfigs == (int)(sizeof(configs) / sizeof(configs[0]))) {
        px_log(PX_WARN, "SIGHUP: too many reloads in this process; restart it");
        return;
    }
    if ((cfg = px_config_load(srv->cfg->path, err, sizeof(err))) == NULL) {
        px_log(PX_WARN, "SIGHUP: keeping the old configuration: %s", err);
        return;
    }
    if (srv->tls != NULL) {
        struct px_tls *t = px_tls_load(cfg, err, sizeof(err));
        if (t == NULL || ntls_sets == (int)(sizeof(tls_sets) / sizeof(tls_sets[0]))) {
            px_log(PX_WARN, "SIGHUP: keeping the old configuration and certificates: %s",
                   t == NULL ? err : "too many reloads");
            px_tls_free(t);
            px_config_free(cfg);
            return;
        }
        tls_sets[ntls_sets++] = t;
        srv->tls = t; /* new handshakes use the new certificates; open connections keep theirs */
    }
    configs[nconfigs++] = cfg;
    if (cfg->cookie_secret == NULL && srv->cfg->cookie_secret != NULL)
        cfg->cookie_secret = strdup(srv->cfg->cookie_secret); /* keep issued cookies valid */
    srv->cfg = cfg;
    px_lookup_set_config(cfg);
    px_log_level = cfg->log_level;
    px_log(PX_INFO, "SIGHUP: configuration%s reloaded (listeners unchanged)",
           srv->tls != NULL ? " and certificates" : "");
    warn_fd_cap(srv);
}

static void on_hup(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    notify_reloading();
    reload(arg);
    notify("READY=1"); /* also after a refused reload: the old configuration serves */
}

/* SIGUSR1, from logrotate's postrotate: open the log files again by name. A file
 * that cannot be opened is reported and the old one kept. */
static void on_usr1(evutil_socket_t sig, short what, void *arg)
{
    struct px_server *srv = arg;
    FILE *f;
    (void)sig;
    (void)what;

    if (px_log_open_error(error_log_path) != 0)
        px_log(PX_WARN, "SIGUSR1: cannot reopen error_log %s: %s; keeping the old file",
               error_log_path, strerror(errno));
    if (srv->access != NULL && srv->access != stderr) {
        if ((f = open_access_log(access_log_path)) == NULL) {
            px_log(PX_WARN, "SIGUSR1: cannot reopen access_log %s: %s; keeping the old file",
                   access_log_path, strerror(errno));
        } else {
            fclose(srv->access);
            srv->access = f;
        }
    }
    px_log(PX_INFO, "SIGUSR1: log files reopened");
}

static int run_worker(struct px_config *cfg)
{
    struct px_server srv = {0};
    struct event *sigs[5]; /* SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2 */
    int rc = 0;

    signal(SIGPIPE, SIG_IGN);
    srv.cfg = cfg;
    srv.pid = (unsigned)getpid();
    srv.tls = ntls_sets > 0 ? tls_sets[ntls_sets - 1] : NULL;
    px_srv = &srv;
    /* (No EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST: it saves a few epoll_ctl calls,
     * but libevent documents hazards with it, and a rare WebSocket stall under
     * backpressure was seen while it was on. Reliability first.) */
    if ((srv.base = event_base_new()) == NULL) {
        px_log(PX_ERR, "cannot create the event loop");
        return 1;
    }
    srv.dns = evdns_base_new(srv.base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
    if (srv.dns == NULL) /* no resolv.conf: IP literals and /etc/hosts still work */
        srv.dns = evdns_base_new(srv.base, 0);
    if (srv.dns != NULL)
        evdns_base_load_hosts(srv.dns, NULL);
    srv.pool = px_pool_new(&srv);
    {
        char err[256];
        /* https runners: loaded once here, before the loop, as file reads block. */
        if ((srv.up_tls = px_tls_client_ctx(cfg, err, sizeof(err))) == NULL) {
            px_log(PX_ERR, "%s", err);
            return 1;
        }
    }
    if (!strcmp(cfg->access_log, "stderr")) {
        srv.access = stderr;
    } else if (strcmp(cfg->access_log, "off") != 0) {
        if ((srv.access = open_access_log(cfg->access_log)) == NULL) {
            px_log(PX_ERR, "cannot open access_log %s: %s", cfg->access_log, strerror(errno));
            return 1;
        }
        access_log_path = cfg->access_log;
    }
    px_lookup_set_server(&srv);
    px_activity_set_server(&srv);
    if (srv.pool == NULL || px_lookup_init(srv.base, cfg) != 0 || open_listeners(&srv) != 0 ||
        px_api_start(&srv) != 0)
        return 1;
    metrics_listener = px_metrics_listen(&srv);
    if (cfg->metrics.addrlen != 0 && metrics_listener == NULL) {
        px_log(PX_ERR, "cannot listen on metrics_listen: %s", strerror(errno));
        return 1;
    }
    if (metrics_listener != NULL)
        evconnlistener_set_error_cb(metrics_listener, on_accept_error);
    if ((accept_timer = evtimer_new(srv.base, on_accept_timer, &srv)) == NULL) {
        px_log(PX_ERR, "cannot create the event loop");
        return 1;
    }
    srv.fd_cap = fd_cap(); /* after the listeners, Redis and the logs are open */
    warn_fd_cap(&srv);
    sigs[0] = evsignal_new(srv.base, SIGTERM, on_term, &srv);
    sigs[1] = evsignal_new(srv.base, SIGINT, on_term, &srv);
    sigs[2] = evsignal_new(srv.base, SIGHUP, on_hup, &srv);
    sigs[3] = evsignal_new(srv.base, SIGUSR1, on_usr1, &srv);
    sigs[4] = evsignal_new(srv.base, SIGUSR2, on_usr2, &srv);
    for (int i = 0; i < 5; i++)
        evsignal_add(sigs[i], NULL);
    /* Signals sent while this worker started were held (run_master); from here
     * the loop handles them. */
    sigset_t held;
    sigemptyset(&held);
    sigaddset(&held, SIGTERM);
    sigaddset(&held, SIGINT);
    sigaddset(&held, SIGHUP);
    sigaddset(&held, SIGUSR1);
    sigprocmask(SIG_UNBLOCK, &held, NULL);
    px_log(PX_INFO, "preview-proxy %s worker %u serving", PX_VERSION, srv.pid);
    notify("READY=1");
    if (event_base_dispatch(srv.base) < 0)
        rc = 1;
    px_log(PX_INFO, "worker %u exiting", srv.pid);
    px_ppaccept_close_all();
    px_conn_close_all(&srv);
    close_listeners();
    if (metrics_listener != NULL)
        evconnlistener_free(metrics_listener);
    metrics_listener = NULL;
    event_free(accept_timer);
    accept_timer = NULL;
    for (int i = 0; i < 5; i++)
        event_free(sigs[i]);
    if (shutdown_timer != NULL)
        event_free(shutdown_timer);
    px_oidc_shutdown(); /* before px_api_cancel_all: it cancels its own fetches */
    px_api_stop();
    px_lookup_shutdown();
    px_api_cancel_all();
    px_pool_free(srv.pool);
    SSL_CTX_free(srv.up_tls);
    if (srv.dns != NULL)
        evdns_base_free(srv.dns, 0);
    if (srv.access != NULL && srv.access != stderr)
        fclose(srv.access);
    event_base_free(srv.base);
    return rc;
}

/* One flag per signal, so that a SIGUSR1 and a SIGHUP arriving together are
 * both relayed. */
static volatile sig_atomic_t master_got[NSIG];

static void master_on_signal(int sig)
{
    master_got[sig] = 1;
}

/* The master relays SIGTERM/SIGINT/SIGHUP/SIGUSR1 to the workers and exits when
 * they all have; a worker that dies unexpectedly is replaced. It sleeps in
 * poll() on ready_pipe, woken by a worker's byte or a signal (EINTR), and at
 * least every REAP_MS to reap: SIGCHLD is not caught. */
#define REAP_MS 100
static int run_master(struct px_config *cfg)
{
    pid_t *pids = calloc((size_t)cfg->workers, sizeof(pid_t));
    int alive = 0, rc = 0, stopping = 0;
    int waiting = cfg->workers; /* bytes on ready_pipe until READY=1; 0: none expected */
    struct sigaction sa = {0};

    if (pids == NULL)
        return 1;
    if (pipe(ready_pipe) != 0) {
        px_log(PX_ERR, "pipe: %s", strerror(errno));
        free(pids);
        return 1;
    }
    for (int i = 0; i < 2; i++) {
        fcntl(ready_pipe[i], F_SETFD, FD_CLOEXEC);
        fcntl(ready_pipe[i], F_SETFL, O_NONBLOCK);
    }
    sa.sa_handler = master_on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    for (;;) {
        for (int i = 0; i < cfg->workers && !stopping; i++) {
            if (pids[i] != 0)
                continue;
            /* A worker holds SIGTERM/SIGINT/SIGHUP/SIGUSR1 until its loop can
             * handle them: one that arrives during start-up must drain, not kill it. */
            sigset_t hold, old;
            sigemptyset(&hold);
            sigaddset(&hold, SIGTERM);
            sigaddset(&hold, SIGINT);
            sigaddset(&hold, SIGHUP);
            sigaddset(&hold, SIGUSR1);
            sigprocmask(SIG_BLOCK, &hold, &old);
            pid_t p = fork();
            if (p == 0) {
                signal(SIGTERM, SIG_DFL);
                signal(SIGINT, SIG_DFL);
                signal(SIGHUP, SIG_DFL);
                signal(SIGUSR1, SIG_DFL);
                close(ready_pipe[0]);
                report_fd = ready_pipe[1];
                exit(run_worker(cfg));
            }
            sigprocmask(SIG_SETMASK, &old, NULL);
            if (p < 0) {
                px_log(PX_ERR, "fork: %s", strerror(errno));
                return 1;
            }
            pids[i] = p;
            alive++;
        }
        if (alive == 0)
            break;
        struct pollfd pfd = {.fd = ready_pipe[0], .events = POLLIN};
        if (poll(&pfd, 1, REAP_MS) > 0) {
            char buf[64];
            ssize_t n = read(ready_pipe[0], buf, sizeof(buf));
            if (n > 0 && waiting > 0 && (waiting -= (int)n) <= 0) {
                waiting = 0;
                sd_notify(0, "READY=1");
            }
        }
        static const int relayed[] = {SIGTERM, SIGINT, SIGHUP, SIGUSR1};
        for (size_t k = 0; k < sizeof(relayed) / sizeof(relayed[0]); k++) {
            int sig = relayed[k];
            if (!master_got[sig])
                continue;
            master_got[sig] = 0;
            if (sig == SIGTERM || sig == SIGINT) {
                stopping = 1;
                sd_notify(0, "STOPPING=1");
            } else if (sig == SIGHUP) {
                notify_reloading();
                waiting = alive; /* each worker writes a byte when its reload is done */
            } else if (sig == SIGUSR1 && px_log_open_error(error_log_path) != 0) {
                px_log(PX_WARN, "SIGUSR1: cannot reopen error_log %s: %s; keeping the old file",
                       error_log_path, strerror(errno));
            }
            for (int i = 0; i < cfg->workers; i++)
                if (pids[i] != 0)
                    kill(pids[i], sig);
        }
        int status;
        pid_t p;
        while ((p = waitpid(-1, &status, WNOHANG)) > 0) {
            for (int i = 0; i < cfg->workers; i++) {
                if (pids[i] != p)
                    continue;
                pids[i] = 0;
                alive--;
                if (!stopping) {
                    px_log(PX_ERR, "worker %d died (status %d); restarting it", (int)p, status);
                } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                    rc = 1;
                }
            }
        }
        if (p < 0 && errno == ECHILD && alive > 0)
            break; /* cannot happen: every worker is our child */
    }
    free(pids);
    close(ready_pipe[0]);
    close(ready_pipe[1]);
    return rc;
}

/* glibc gives the top of the heap back to the kernel whenever 128 KiB of it
 * is free, and an HTTP/2 burst frees and reallocates that much many times a
 * second: each time costs page faults (perf: about 4% of the h2 path, 11-13%
 * of CPU per h2 request measured side by side). Keep up to 32 MiB of freed
 * heap and grow it 4 MiB at a time; untouched pages cost no RSS. Fixing the
 * trim threshold also fixes the mmap threshold, so raise that to 1 MiB to keep
 * 64 KiB-1 MiB buffers off mmap/munmap. */
static void tune_malloc(void)
{
    mallopt(M_MMAP_THRESHOLD, 1 << 20);
    mallopt(M_TRIM_THRESHOLD, 32 << 20);
    mallopt(M_TOP_PAD, 4 << 20);
}

int main(int argc, char **argv)
{
    const char *path = "proxy.conf";
    int check = 0, opt, rc;
    char err[512];
    struct px_config *cfg;

    tune_malloc();
    while ((opt = getopt(argc, argv, "tc:h")) != -1) {
        switch (opt) {
        case 't': check = 1; break;
        case 'c': path = optarg; break;
        default: usage(); return 2;
        }
    }
    if (optind != argc) {
        usage();
        return 2;
    }
    setvbuf(stderr, NULL, _IOLBF, 0);
    if ((cfg = px_config_load(path, err, sizeof(err))) == NULL) {
        fprintf(stderr, "preview-proxy: %s\n", err);
        return 1;
    }
    for (int i = 0; i < cfg->nlisten; i++)
        if (cfg->listen[i].tls && ntls_sets == 0) {
            struct px_tls *t = px_tls_load(cfg, err, sizeof(err));
            if (t == NULL) {
                fprintf(stderr, "preview-proxy: %s\n", err);
                px_config_free(cfg);
                return 1;
            }
            tls_sets[ntls_sets++] = t;
        }
    if (check) {
        fprintf(stderr, "preview-proxy: configuration %s is good\n", path);
        px_config_free(cfg);
        return 0;
    }
    px_log_level = cfg->log_level;
    /* Until a handler is installed, a logrotate SIGUSR1 must not kill us, nor
     * a SIGUSR2 (binary upgrade) a master, which has none. */
    signal(SIGUSR1, SIG_IGN);
    signal(SIGUSR2, SIG_IGN);
    take_inherited();
    self_argv = argv;
    ssize_t n = readlink("/proc/self/exe", self_exe, sizeof(self_exe) - 1);
    self_exe[n > 0 && !strstr(self_exe, " (deleted)") ? n : 0] = '\0';
    if (px_log_open_error(cfg->error_log) != 0) {
        fprintf(stderr, "preview-proxy: cannot open error_log %s: %s\n", cfg->error_log,
                strerror(errno));
        px_config_free(cfg);
        return 1;
    }
    error_log_path = cfg->error_log;
    if (cfg->cookie_secret == NULL) {
        /* SPEC 4.5: made before fork() so that all workers share it. */
        unsigned char rnd[32];
        char hex[65];
        if (RAND_bytes(rnd, sizeof(rnd)) != 1 || (cfg->cookie_secret = malloc(65)) == NULL) {
            fprintf(stderr, "preview-proxy: cannot make a cookie secret\n");
            return 1;
        }
        for (int i = 0; i < 32; i++)
            sprintf(hex + 2 * i, "%02x", rnd[i]);
        memcpy(cfg->cookie_secret, hex, 65);
        px_log(PX_WARN, "no cookie_secret or PROXY_API_KEY: using a random one; auth cookies "
                        "will not survive a restart");
    }
    configs[nconfigs++] = cfg;
    rc = cfg->workers > 1 ? run_master(cfg) : run_worker(cfg);
    for (int i = 0; i < nconfigs; i++)
        px_config_free(configs[i]);
    for (int i = 0; i < ntls_sets; i++)
        px_tls_free(tls_sets[i]);
    return rc;
}
