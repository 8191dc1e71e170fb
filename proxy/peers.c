/* peers.c — see peers.h. A chained hash of the addresses that hold sockets:
 * entries live while their count is above zero, so the table holds at most
 * one entry per open client socket (bounded by max_connections). */
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#include "proxy/peers.h"
#include "proxy/px.h"
#include "proxy/server.h"

#define NBUCKETS 4096 /* a power of two; chains stay short up to ~100k addresses */

struct px_peer {
    uint8_t key[9]; /* family tag, then 4 (IPv4) or 8 (IPv6 /64) bytes */
    unsigned count;
    struct px_peer *next, **pprev;
};

static struct px_peer *buckets[NBUCKETS];
static uint64_t seed; /* random per process: chains cannot be aimed at */
static unsigned long naddrs, nrefused;

static int make_key(const struct sockaddr *sa, uint8_t key[9])
{
    memset(key, 0, 9);
    if (sa->sa_family == AF_INET) {
        key[0] = 4;
        memcpy(key + 1, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        return 0;
    }
    if (sa->sa_family == AF_INET6) {
        const uint8_t *a = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
        static const uint8_t v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (!memcmp(a, v4mapped, 12)) { /* the same client as its IPv4 address */
            key[0] = 4;
            memcpy(key + 1, a + 12, 4);
        } else {
            key[0] = 6;
            memcpy(key + 1, a, 8);
        }
        return 0;
    }
    return -1;
}

static size_t bucket_of(const uint8_t key[9])
{
    uint64_t h = seed ^ 0x9e3779b97f4a7c15ull;

    for (int i = 0; i < 9; i++) {
        h ^= key[i];
        h *= 0x100000001b3ull;
        h ^= h >> 29;
    }
    return (size_t)(h & (NBUCKETS - 1));
}

int px_peer_take(struct px_server *srv, const struct sockaddr *sa, struct px_peer **slot)
{
    unsigned cap = (unsigned)srv->cfg->max_connections_per_ip;
    uint8_t key[9];
    struct px_peer *p;

    *slot = NULL;
    if (cap == 0 || make_key(sa, key) != 0 || px_config_trusted(srv->cfg, sa))
        return 0;
    if (seed == 0 && RAND_bytes((unsigned char *)&seed, sizeof(seed)) != 1)
        seed = (uint64_t)(uintptr_t)&seed ^ 0x5bd1e995u;
    size_t b = bucket_of(key);
    for (p = buckets[b]; p != NULL; p = p->next)
        if (!memcmp(p->key, key, sizeof(key)))
            break;
    if (p == NULL) {
        if ((p = calloc(1, sizeof(*p))) == NULL)
            return 0; /* not counted rather than refused: memory, not the client, ran out */
        memcpy(p->key, key, sizeof(key));
        p->next = buckets[b];
        if (p->next != NULL)
            p->next->pprev = &p->next;
        p->pprev = &buckets[b];
        buckets[b] = p;
        naddrs++;
    } else if (p->count >= cap) {
        nrefused++;
        return -1;
    }
    p->count++;
    *slot = p;
    return 0;
}

void px_peer_release(struct px_peer *p)
{
    if (p == NULL || --p->count > 0)
        return;
    *p->pprev = p->next;
    if (p->next != NULL)
        p->next->pprev = p->pprev;
    naddrs--;
    free(p);
}

unsigned long px_peer_addresses(void)
{
    return naddrs;
}

unsigned long px_peer_refused(void)
{
    return nrefused;
}
