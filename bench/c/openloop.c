/* openloop: an open-loop HTTP/1.1 load generator for the bench's latency row.
 *
 * Request i is due at t0 + i / RATE (a constant rate, decided before the run), whatever
 * the server does meanwhile. It leaves on the first keep-alive connection that is free
 * (one request in flight per connection, no pipelining); when none is, it waits in line
 * and its latency still counts from the time it was due, so a server that stalls is
 * charged for every request it delayed, not only for the few in flight ("coordinated
 * omission"). Latency ends when the whole response has been read.
 *
 *   openloop -r RATE -d SECONDS [-w WARMUP] [-c CONNECTIONS] [-m METHOD] [-b BODY]
 *            [-u USERS] [-s SEED] [-H 'Name: value']... [-T DRAIN] [-o TRACE]
 *            http://HOST:PORT/PATH
 *
 * Requests due in the first WARMUP seconds are sent but not counted. BODY may hold one
 * "%u", replaced in each request by a number drawn at random in 1..USERS. After the last
 * request is due, those still unanswered get DRAIN seconds more (default 5); any left
 * then count as unanswered, their latency as the time waited so far (a lower bound).
 * Prints one JSON object on stdout: what was due, sent and answered, the achieved rate,
 * the latency percentiles (nearest rank, ms) and the generator's own send lag.
 * TRACE, if given, gets a line per measured request answered: the ms from the start of
 * the measured window to when it was due, and its latency in ms (to see when a tail
 * happened).
 *
 * Build: cc -O2 -o openloop openloop.c (Linux: epoll and timerfd).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define MAX_HEADERS 16
#define MAX_STATUS 600
#define HEAD_LIMIT 65536
#define TIMER_TAG UINT64_MAX

enum { DOWN, CONNECTING, IDLE, BUSY };

typedef struct {
    int fd;
    int state;
    int listed;        /* on the stack of idle connections */
    int writing;       /* waiting for room to write (EPOLLOUT asked for) */
    int64_t retry_at;  /* DOWN: when to connect again */
    int64_t req;       /* BUSY: the request in flight */
    char *out;
    size_t out_len, out_pos;
    char *in;
    size_t in_len, in_cap;
} conn_t;

static struct {
    double rate, duration, warmup, drain;
    int connections;
    const char *method, *body, *path, *trace;
    char host[256], port[16];
    const char *headers[MAX_HEADERS];
    int header_count;
    uint64_t users, seed;
} opt = {0, 0, 0, 5.0, 64, NULL, NULL, "/", NULL, "", "80", {0}, 0, 1000000, 1};

static struct addrinfo *address;
static int64_t t0;
static double ns_per_request;
static int64_t total, warm;          /* requests due in all, and in the warm-up */
static int64_t next_req, due;        /* next request to send; requests due so far */
static int64_t *latency, *lag;       /* per measured request, ns */
static int64_t *due_at;              /* with -o: when each answered one was due, ns */
static int64_t samples, answered, sent, lag_count;
static int64_t ok, not_ok, failed, connect_errors, protocol_errors, reconnects;
static int64_t max_backlog, first_answer, last_answer;
static int64_t statuses[MAX_STATUS];
static int busy, idle_count;
static conn_t **idle;
static uint64_t rng;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t sched(int64_t i) { return t0 + (int64_t)((double)i * ns_per_request); }

static uint64_t draw(void) { /* xorshift64*, 1..users */
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return (rng * 2685821657736338717ULL) % opt.users + 1;
}

static void die(const char *what) {
    fprintf(stderr, "openloop: %s\n", what);
    exit(2);
}

static void usage(void) {
    die("usage: openloop -r RATE -d SECONDS [-w WARMUP] [-c CONNECTIONS] [-m METHOD] "
        "[-b BODY] [-u USERS] [-s SEED] [-H 'Name: value']... [-T DRAIN] [-o TRACE] "
        "http://HOST:PORT/PATH");
}

static void parse_url(const char *url) {
    if (strncmp(url, "http://", 7) != 0) usage();
    const char *host = url + 7, *slash = strchr(host, '/');
    size_t len = slash ? (size_t)(slash - host) : strlen(host);
    if (len == 0 || len >= sizeof opt.host) usage();
    memcpy(opt.host, host, len);
    opt.host[len] = '\0';
    char *colon = strrchr(opt.host, ':');
    if (colon) {
        *colon = '\0';
        snprintf(opt.port, sizeof opt.port, "%s", colon + 1);
    }
    opt.path = slash ? slash : "/";
}

/* ------------------------------------------------------------------ connections */

static int epfd;

static void watch(conn_t *c, int op, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(epfd, op, c->fd, &ev) != 0) die("epoll_ctl failed");
}

static void close_conn(conn_t *c, int64_t now) {
    if (c->fd >= 0) close(c->fd); /* closing removes it from the epoll set */
    c->fd = -1;
    c->state = DOWN;
    c->retry_at = now;
    c->writing = 0;
    c->in_len = 0;
    c->out_len = c->out_pos = 0;
}

static void set_idle(conn_t *c) {
    c->state = IDLE;
    if (!c->listed) {
        c->listed = 1;
        idle[idle_count++] = c;
    }
}

static conn_t *take_idle(void) { /* a connection may have closed since it was listed */
    while (idle_count > 0) {
        conn_t *c = idle[--idle_count];
        c->listed = 0;
        if (c->state == IDLE) return c;
    }
    return NULL;
}

static void start_connect(conn_t *c, int64_t now) {
    int fd = socket(address->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket failed");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd = fd;
    if (connect(fd, address->ai_addr, address->ai_addrlen) == 0) {
        watch(c, EPOLL_CTL_ADD, EPOLLIN);
        set_idle(c);
    } else if (errno == EINPROGRESS) {
        c->state = CONNECTING;
        watch(c, EPOLL_CTL_ADD, EPOLLOUT);
    } else {
        connect_errors++;
        close_conn(c, now);
        c->retry_at = now + 50000000; /* 50 ms */
    }
}

/* ------------------------------------------------------------------ requests */

static char head[8192];
static size_t head_len;
static const char *body_pre, *body_post;
static size_t body_pre_len, body_post_len;
static int body_numbered; /* the body holds %u */

static void build_head(void) {
    int n = snprintf(head, sizeof head, "%s %s HTTP/1.1\r\nHost: %s:%s\r\n", opt.method,
                     opt.path, opt.host, opt.port);
    for (int i = 0; i < opt.header_count; i++)
        n += snprintf(head + n, sizeof head - (size_t)n, "%s\r\n", opt.headers[i]);
    if (n >= (int)sizeof head - 64) die("headers too long");
    head_len = (size_t)n;
    if (opt.body) {
        const char *mark = strstr(opt.body, "%u");
        body_pre = opt.body;
        body_pre_len = mark ? (size_t)(mark - opt.body) : strlen(opt.body);
        body_post = mark ? mark + 2 : "";
        body_numbered = mark != NULL;
        body_post_len = strlen(body_post);
        if (mark && strstr(body_post, "%u")) die("BODY may hold one %u");
    }
}

static void flush_out(conn_t *c, int64_t now);

static void send_request(conn_t *c, int64_t i, int64_t now) {
    size_t cap = head_len + body_pre_len + body_post_len + 64;
    c->out = realloc(c->out, cap);
    if (!c->out) die("out of memory");
    memcpy(c->out, head, head_len);
    size_t n = head_len;
    if (opt.body) {
        char number[24] = "";
        int digits = 0;
        if (body_numbered)
            digits = snprintf(number, sizeof number, "%llu", (unsigned long long)draw());
        size_t length = body_pre_len + (size_t)digits + body_post_len;
        n += (size_t)snprintf(c->out + n, cap - n, "Content-Length: %zu\r\n\r\n", length);
        memcpy(c->out + n, body_pre, body_pre_len);
        n += body_pre_len;
        memcpy(c->out + n, number, (size_t)digits);
        n += (size_t)digits;
        memcpy(c->out + n, body_post, body_post_len);
        n += body_post_len;
    } else {
        memcpy(c->out + n, "\r\n", 2);
        n += 2;
    }
    c->out_len = n;
    c->out_pos = 0;
    c->req = i;
    c->state = BUSY;
    busy++;
    if (i >= warm) {
        lag[lag_count++] = now - sched(i);
        sent++;
    }
    flush_out(c, now);
}

static void lose_request(conn_t *c, int64_t now) {
    if (c->state == BUSY) {
        failed += c->req >= warm;
        busy--;
    }
    close_conn(c, now);
}

static void flush_out(conn_t *c, int64_t now) {
    while (c->out_pos < c->out_len) {
        ssize_t w = write(c->fd, c->out + c->out_pos, c->out_len - c->out_pos);
        if (w > 0) {
            c->out_pos += (size_t)w;
        } else if (w < 0 && errno == EAGAIN) {
            if (!c->writing) watch(c, EPOLL_CTL_MOD, EPOLLIN | EPOLLOUT);
            c->writing = 1;
            return;
        } else {
            lose_request(c, now);
            return;
        }
    }
    if (c->writing) watch(c, EPOLL_CTL_MOD, EPOLLIN);
    c->writing = 0;
}

/* ------------------------------------------------------------------ responses */

static const char *find(const char *from, const char *end, const char *what) {
    return memmem(from, (size_t)(end - from), what, strlen(what));
}

/* One response at the start of b[0..n): its length when it is all there, 0 when more
 * is needed, -1 when it is not HTTP/1.x or its length cannot be known. */
long response_length(const char *b, size_t n, int *status, int *keep_alive) {
    const char *end = b + n, *stop = find(b, end, "\r\n\r\n");
    if (!stop) return n > HEAD_LIMIT ? -1 : 0;
    if (n < 12 || strncmp(b, "HTTP/1.", 7) != 0 || b[8] != ' ') return -1;
    *status = 0;
    for (int k = 9; k < 12; k++) {
        if (b[k] < '0' || b[k] > '9') return -1;
        *status = *status * 10 + b[k] - '0';
    }
    *keep_alive = b[7] == '1';
    long length = -1;
    int chunked = 0;
    const char *line = find(b, stop + 2, "\r\n") + 2;
    while (line < stop + 2) {
        const char *eol = find(line, stop + 2, "\r\n");
        const char *colon = memchr(line, ':', (size_t)(eol - line));
        if (colon) {
            size_t name = (size_t)(colon - line);
            const char *value = colon + 1;
            while (value < eol && (*value == ' ' || *value == '\t')) value++;
            size_t vlen = (size_t)(eol - value);
            if (name == 14 && strncasecmp(line, "content-length", 14) == 0) {
                length = strtol(value, NULL, 10);
            } else if (name == 17 && strncasecmp(line, "transfer-encoding", 17) == 0) {
                chunked = memmem(value, vlen, "chunked", 7) != NULL;
            } else if (name == 10 && strncasecmp(line, "connection", 10) == 0) {
                if (vlen >= 5 && strncasecmp(value, "close", 5) == 0) *keep_alive = 0;
                if (vlen >= 10 && strncasecmp(value, "keep-alive", 10) == 0) *keep_alive = 1;
            }
        }
        line = eol + 2;
    }
    size_t at = (size_t)(stop + 4 - b);
    if (*status < 200 || *status == 204 || *status == 304) return (long)at;
    if (chunked) {
        for (;;) {
            const char *eol = find(b + at, end, "\r\n");
            if (!eol) return 0;
            long size = strtol(b + at, NULL, 16);
            if (size < 0) return -1;
            at = (size_t)(eol + 2 - b);
            if (size == 0) { /* the last chunk, then trailers up to an empty line */
                if (n >= at + 2 && memcmp(b + at, "\r\n", 2) == 0) return (long)(at + 2);
                const char *trailers = find(b + at, end, "\r\n\r\n");
                return trailers ? (long)(trailers + 4 - b) : 0;
            }
            if (n < at + (size_t)size + 2) return 0;
            at += (size_t)size + 2;
        }
    }
    if (length < 0) return -1;
    return n >= at + (size_t)length ? (long)(at + (size_t)length) : 0;
}

static void answer(conn_t *c, int status, int64_t now) {
    int64_t i = c->req;
    busy--;
    c->req = -1;
    set_idle(c);
    if (i < warm) return;
    if (due_at) due_at[samples] = sched(i) - sched(warm);
    latency[samples++] = now - sched(i);
    if (answered++ == 0) first_answer = now;
    last_answer = now;
    if (status >= 200 && status < 400) ok++;
    else not_ok++;
    if (status >= 0 && status < MAX_STATUS) statuses[status]++;
}

static void on_readable(conn_t *c, int64_t now) {
    if (c->in_cap - c->in_len < 16384) {
        c->in_cap = c->in_cap ? c->in_cap * 2 : 65536;
        c->in = realloc(c->in, c->in_cap);
        if (!c->in) die("out of memory");
    }
    ssize_t r = read(c->fd, c->in + c->in_len, c->in_cap - c->in_len);
    if (r < 0 && errno == EAGAIN) return;
    if (r <= 0) { /* closed: a request in flight is lost, an idle connection is reopened */
        if (c->state == IDLE) reconnects++;
        lose_request(c, now);
        return;
    }
    c->in_len += (size_t)r;
    int status = 0, keep_alive = 1;
    long length = response_length(c->in, c->in_len, &status, &keep_alive);
    if (length == 0) return;
    if (length < 0 || c->state != BUSY || (size_t)length != c->in_len) {
        protocol_errors++; /* garbage, an answer nobody asked for, or more than one */
        lose_request(c, now);
        return;
    }
    c->in_len = 0;
    answer(c, status, now);
    if (!keep_alive) { /* answered, then closed: open another */
        reconnects++;
        close_conn(c, now);
    }
}

static void on_connected(conn_t *c, int64_t now) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
        connect_errors++;
        close_conn(c, now);
        c->retry_at = now + 50000000;
        return;
    }
    watch(c, EPOLL_CTL_MOD, EPOLLIN);
    set_idle(c);
}

static void on_event(conn_t *c, uint32_t events, int64_t now) {
    if (c->state == CONNECTING) {
        on_connected(c, now);
        return;
    }
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(c, now);
    if (c->state == BUSY && (events & EPOLLOUT)) flush_out(c, now);
}

/* ------------------------------------------------------------------ report */

static int by_value(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static double pct_ms(int64_t *values, int64_t n, double q) { /* nearest rank */
    if (n == 0) return 0.0;
    int64_t rank = (int64_t)ceil(q * (double)n);
    if (rank < 1) rank = 1;
    return (double)values[rank - 1] / 1e6;
}

static void write_trace(int64_t count) { /* before the latencies are sorted */
    FILE *out = fopen(opt.trace, "w");
    if (!out) die("cannot write the trace file");
    for (int64_t k = 0; k < count; k++)
        fprintf(out, "%.3f %.3f\n", (double)due_at[k] / 1e6, (double)latency[k] / 1e6);
    fclose(out);
}

static void report(int64_t unanswered, double elapsed) {
    qsort(latency, (size_t)samples, sizeof *latency, by_value);
    qsort(lag, (size_t)lag_count, sizeof *lag, by_value);
    double sum = 0;
    for (int64_t k = 0; k < samples; k++) sum += (double)latency[k];
    /* The pace of the answers: from the first to the last, but never faster than the
     * schedule (a server that answers in bursts is as fast as the requests came). */
    int64_t measured = total - warm;
    double span = (double)(last_answer - first_answer) / 1e9, paced = (double)(measured - 1) / opt.rate;
    if (span < paced) span = paced;
    double achieved = answered > 1 && span > 0 ? (double)(answered - 1) / span
                                                : (double)answered / opt.duration;
    printf("{\"target_rate\": %.3f, \"duration_s\": %.3f, \"warmup_s\": %.3f, "
           "\"connections\": %d, \"due\": %lld, \"sent\": %lld, \"answered\": %lld, "
           "\"ok\": %lld, \"non_2xx\": %lld, \"failed\": %lld, \"unanswered\": %lld, "
           "\"connect_errors\": %lld, \"protocol_errors\": %lld, \"reconnects\": %lld, "
           "\"achieved_per_s\": %.3f, \"elapsed_s\": %.3f, \"mean_ms\": %.4f, "
           "\"p50_ms\": %.4f, \"p90_ms\": %.4f, \"p99_ms\": %.4f, \"p999_ms\": %.4f, "
           "\"max_ms\": %.4f, \"send_lag_p50_ms\": %.4f, \"send_lag_p99_ms\": %.4f, "
           "\"send_lag_max_ms\": %.4f, \"max_backlog\": %lld, \"statuses\": {",
           opt.rate, opt.duration, opt.warmup, opt.connections, (long long)measured,
           (long long)sent, (long long)answered, (long long)ok, (long long)not_ok,
           (long long)failed, (long long)unanswered, (long long)connect_errors,
           (long long)protocol_errors, (long long)reconnects, achieved, elapsed,
           samples ? sum / (double)samples / 1e6 : 0.0, pct_ms(latency, samples, 0.5),
           pct_ms(latency, samples, 0.9), pct_ms(latency, samples, 0.99),
           pct_ms(latency, samples, 0.999), pct_ms(latency, samples, 1.0),
           pct_ms(lag, lag_count, 0.5), pct_ms(lag, lag_count, 0.99), pct_ms(lag, lag_count, 1.0),
           (long long)max_backlog);
    const char *sep = "";
    for (int s = 0; s < MAX_STATUS; s++) {
        if (statuses[s]) {
            printf("%s\"%d\": %lld", sep, s, (long long)statuses[s]);
            sep = ", ";
        }
    }
    printf("}}\n");
}

/* ------------------------------------------------------------------ main */

int main(int argc, char **argv) {
    int ch;
    while ((ch = getopt(argc, argv, "r:d:w:c:m:b:u:s:H:T:o:")) != -1) {
        switch (ch) {
        case 'r': opt.rate = atof(optarg); break;
        case 'd': opt.duration = atof(optarg); break;
        case 'w': opt.warmup = atof(optarg); break;
        case 'c': opt.connections = atoi(optarg); break;
        case 'm': opt.method = optarg; break;
        case 'b': opt.body = optarg; break;
        case 'u': opt.users = strtoull(optarg, NULL, 10); break;
        case 's': opt.seed = strtoull(optarg, NULL, 10); break;
        case 'T': opt.drain = atof(optarg); break;
        case 'o': opt.trace = optarg; break;
        case 'H':
            if (opt.header_count == MAX_HEADERS) die("too many -H");
            opt.headers[opt.header_count++] = optarg;
            break;
        default: usage();
        }
    }
    if (optind != argc - 1 || opt.rate <= 0 || opt.duration <= 0 || opt.warmup < 0 ||
        opt.connections < 1 || opt.users < 1 || opt.drain < 0)
        usage();
    parse_url(argv[optind]);
    if (!opt.method) opt.method = opt.body ? "POST" : "GET";
    rng = opt.seed * 0x9E3779B97F4A7C15ULL + 1;
    build_head();
    signal(SIGPIPE, SIG_IGN);

    struct addrinfo hints = {.ai_socktype = SOCK_STREAM};
    if (getaddrinfo(opt.host, opt.port, &hints, &address) != 0) die("cannot resolve the host");

    ns_per_request = 1e9 / opt.rate;
    warm = llround(opt.warmup * opt.rate);
    total = warm + llround(opt.duration * opt.rate);
    latency = malloc(sizeof *latency * (size_t)(total - warm + 1));
    lag = malloc(sizeof *lag * (size_t)(total - warm + 1));
    conn_t *conns = calloc((size_t)opt.connections, sizeof *conns);
    idle = calloc((size_t)opt.connections, sizeof *idle);
    if (opt.trace) due_at = malloc(sizeof *due_at * (size_t)(total - warm + 1));
    if (!latency || !lag || !conns || !idle || (opt.trace && !due_at)) die("out of memory");

    epfd = epoll_create1(EPOLL_CLOEXEC);
    int timer = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    struct epoll_event tev = {.events = EPOLLIN, .data.u64 = TIMER_TAG};
    if (epfd < 0 || timer < 0 || epoll_ctl(epfd, EPOLL_CTL_ADD, timer, &tev) != 0)
        die("epoll/timerfd failed");

    /* Open every connection before the clock starts (up to 5 s). */
    int64_t started = now_ns();
    for (int k = 0; k < opt.connections; k++) {
        conns[k].fd = -1;
        conns[k].req = -1;
        start_connect(&conns[k], started);
    }
    struct epoll_event events[256];
    for (;;) {
        int ready = 0;
        for (int k = 0; k < opt.connections; k++) ready += conns[k].state == IDLE;
        if (ready == opt.connections) break;
        if (now_ns() - started > 5000000000LL || connect_errors > 0) {
            fprintf(stderr, "openloop: cannot connect to %s:%s (%d of %d connections)\n",
                    opt.host, opt.port, ready, opt.connections);
            return 1;
        }
        int n = epoll_wait(epfd, events, 256, 10);
        for (int k = 0; k < n; k++)
            if (events[k].data.u64 != TIMER_TAG)
                on_event(events[k].data.ptr, events[k].events, now_ns());
    }

    t0 = now_ns();
    int64_t window_end = t0 + (int64_t)((opt.warmup + opt.duration) * 1e9);
    int64_t deadline = window_end + (int64_t)(opt.drain * 1e9);
    int64_t armed = -1;
    for (;;) {
        int64_t now = now_ns();
        while (due < total && sched(due) <= now) due++;
        conn_t *c;
        while (next_req < due && (c = take_idle()) != NULL) send_request(c, next_req++, now);
        if (due - next_req > max_backlog) max_backlog = due - next_req;
        if ((next_req == total && busy == 0) || now >= deadline) break;

        int wait_ms = (int)((deadline - now) / 1000000) + 1;
        int any_down = 0;
        for (int k = 0; k < opt.connections; k++) {
            if (conns[k].state == DOWN) {
                if (conns[k].retry_at <= now) start_connect(&conns[k], now);
                else any_down = 1;
            }
        }
        if (any_down && wait_ms > 10) wait_ms = 10;
        if (next_req == due && due < total && armed != due) { /* wake when the next is due */
            int64_t at = sched(due);
            struct itimerspec its = {.it_value = {at / 1000000000, at % 1000000000}};
            timerfd_settime(timer, TFD_TIMER_ABSTIME, &its, NULL);
            armed = due;
        }
        int n = epoll_wait(epfd, events, 256, wait_ms);
        now = now_ns();
        for (int k = 0; k < n; k++) {
            if (events[k].data.u64 == TIMER_TAG) {
                uint64_t expirations;
                if (read(timer, &expirations, sizeof expirations) < 0 && errno != EAGAIN)
                    die("timerfd read failed");
                continue;
            }
            on_event(events[k].data.ptr, events[k].events, now);
        }
    }
    /* What is still unanswered counts at the time it has waited: a lower bound. */
    int64_t end = now_ns(), unanswered = 0;
    if (opt.trace) write_trace(samples);
    for (int64_t i = next_req > warm ? next_req : warm; i < total; i++, unanswered++)
        latency[samples++] = end - sched(i); /* never sent */
    for (int k = 0; k < opt.connections; k++) {
        if (conns[k].state == BUSY && conns[k].req >= warm) {
            latency[samples++] = end - sched(conns[k].req); /* sent, not answered */
            unanswered++;
        }
    }
    report(unanswered, (double)(end - t0) / 1e9);
    return 0;
}
