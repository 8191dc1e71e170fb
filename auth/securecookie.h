/* securecookie.h — Daytona's auth cookie encoding: gorilla/securecookie v1.1.2
 * with a gob-encoded string, as its Go proxy writes it through gin
 * (DAYTONA-API.md §6 "Cookie encoding").
 *
 *   payload = gob(string)          len(rest) 0x0c 0x00 len(s) s
 *   v       = b64url=(payload)      padded base64url
 *   mac     = HMAC-SHA256(key, "{name}|{unix}|{v}")
 *   value   = b64url=("{unix}|{v}|" + mac), '=' written as "%3D" (gin)
 *
 * No port, no expiry in the value: the timestamp is the issue time and the
 * reader decides the age. Only the cookie name ties it to a host label. */
#ifndef PX_SECURECOOKIE_H
#define PX_SECURECOOKIE_H

#include <time.h>

#include "proxy/px.h"

/* gorilla's maxLength: a value longer than this (after gin's unescaping) is
 * refused, and we never write one. */
#define PX_SECURECOOKIE_MAX 4096
/* How far in the future a timestamp may be (clock skew between the proxies of
 * one fleet). gorilla itself takes any future time; a future stamp can only come
 * from a holder of the key, so this is belt and braces. */
#define PX_SECURECOOKIE_SKEW 300

/* Writes the cookie value (escaped as gin does, NUL-terminated) that carries
 * string value under cookie name, stamped now, into out. Returns its length, or
 * -1 when it would exceed PX_SECURECOOKIE_MAX or outcap, or on a MAC failure. */
int px_securecookie_encode(const char *key, struct px_str name, struct px_str value, time_t now,
                           char *out, size_t outcap);

/* Reads a value as it arrives (raw '=' or %-escaped): unescaped length at most
 * PX_SECURECOOKIE_MAX, strict padded base64url, MAC right for name (constant
 * time), now - max_age <= unix <= now + PX_SECURECOOKIE_SKEW, payload exactly
 * one gob string of printable ASCII (no spaces) shorter than outcap. Writes the
 * string NUL-terminated into out and returns its length, or -1. */
int px_securecookie_decode(const char *key, struct px_str name, struct px_str wire, time_t now,
                           long max_age, char *out, size_t outcap);

#endif
