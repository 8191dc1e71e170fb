# preview-proxy — see README.md. `make run` and `make test` install what they need.
PKGS    := libevent libevent_openssl libevent_pthreads openssl libnghttp2 hiredis jansson cjose libsystemd
APT_PKGS := build-essential pkg-config libevent-dev libssl-dev libnghttp2-dev libhiredis-dev libjansson-dev \
            libcjose-dev libsystemd-dev \
            libhttp-parser-dev python3 redis-server curl
TEST_PKGS := libcmocka-dev wrk nginx-light haproxy nghttp2-client openssl python3-pytest \
            python3-requests python3-websockets python3-h2 cppcheck clang-format \
            lintian logrotate dpkg-dev systemd man-db prometheus redis-sentinel
# libFuzzer: Debian's clang and its compiler-rt (fuzz/README.md)
FUZZ_PKGS := clang-14 libclang-rt-14-dev
CC      ?= cc
SAN     ?= 0
BUILD   := build
CFLAGS  := -std=gnu11 -Wall -Wextra -Wshadow -g -O2 -I. -MMD -MP
# Hardening (issue 12): checked libc calls, stack canaries, a position-
# independent executable with read-only relocations bound at start. The
# sanitizer build leaves out _FORTIFY_SOURCE, whose checked calls ASan would
# not see into.
HARDEN  := -fstack-protector-strong -fPIE
CFLAGS  += $(HARDEN) -D_FORTIFY_SOURCE=2
LDFLAGS += -pie -Wl,-z,relro,-z,now
ifeq ($(SAN),1)
BUILD   := build-san
CFLAGS  := -std=gnu11 -Wall -Wextra -Wshadow -g -O1 -I. -MMD -MP -fno-omit-frame-pointer \
           -fsanitize=address,undefined -fno-sanitize-recover=undefined $(HARDEN)
LDFLAGS += -fsanitize=address,undefined
endif
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   = $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lhttp_parser

PROXY_SRC := proxy/main.c proxy/config.c proxy/log.c proxy/conn.c proxy/route.c proxy/forward.c proxy/h1.c proxy/upstream.c proxy/api.c proxy/buildlogs.c proxy/wake.c \
             proxy/errors.c proxy/browser.c proxy/metrics.c proxy/peers.c proxy/proxyproto.c proxy/ppaccept.c \
             routing/host.c routing/path.c routing/store.c auth/auth.c \
             auth/cookie.c auth/securecookie.c auth/digest.c auth/fileurl.c auth/lookup.c auth/redis.c auth/sentinel.c auth/sentinel_parse.c auth/activity.c ws/splice.c tls/ctx.c proxy/h2.c
PROXY_SRC += auth/oidc.c
PROXY_OBJ := $(PROXY_SRC:%.c=$(BUILD)/obj/%.o)
LIB_OBJ   := $(filter-out $(BUILD)/obj/proxy/main.o,$(PROXY_OBJ))
UNIT_SRC  := $(wildcard tests/unit/test_*.c)
UNIT_BIN  := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)

.PHONY: all deps test-deps run test test-unit test-integration test-san check clean bench lint \
        install deb fuzz-deps fuzz-build fuzz fuzz-smoke

all: $(BUILD)/preview-proxy $(BUILD)/proxyctl

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(PKG_CFLAGS) -Werror -c $< -o $@

$(BUILD)/preview-proxy: $(PROXY_OBJ)
	$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS)

# --as-needed: proxyctl uses a few of PKG_LIBS, and its package Depends on those only.
$(BUILD)/proxyctl: $(BUILD)/obj/tools/proxyctl.o $(BUILD)/obj/auth/digest.o $(BUILD)/obj/auth/fileurl.o \
                   $(BUILD)/obj/auth/sentinel_parse.o
	$(CC) $(LDFLAGS) -Wl,--as-needed -o $@ $^ $(PKG_LIBS)

$(BUILD)/tests/%: tests/unit/%.c $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(PKG_CFLAGS) -Werror -o $@ $< $(LIB_OBJ) $(LDFLAGS) $(PKG_LIBS) -lcmocka

# Installs missing Debian packages (needs root on a fresh machine).
deps:
	@./scripts/apt-install.sh $(APT_PKGS)

# What the tests need on top: test tools, Chromium and the npm packages of the
# browser tests (never a downloaded browser).
test-deps: deps
	@./scripts/apt-install.sh $(TEST_PKGS) $(FUZZ_PKGS)
	@for s in tests/browser/setup.sh tests/idp/setup.sh tests/terminal/setup.sh; do sh $$s || exit 1; done

run: deps
	$(MAKE) all
	./scripts/run-demo.sh $(BUILD)/preview-proxy

# Everything, twice: the normal build, then the ASan+UBSan build (make check).
test: test-deps
	$(MAKE) all
	$(MAKE) lint
	$(MAKE) test-unit
	$(MAKE) fuzz-smoke
	$(MAKE) test-integration
	$(MAKE) test-san

# Static checks (issue 12): cppcheck's warning, portability and performance
# classes, and clang-format (.clang-format, STYLE.md 12) on every C file.
C_FILES = $(wildcard proxy/*.[ch] auth/*.[ch] routing/*.[ch] tls/*.[ch] ws/*.[ch] tools/*.[ch] \
                     tests/unit/*.[ch])
lint:
	cppcheck --quiet --enable=warning,portability,performance --std=c11 --inline-suppr -I. \
	  --suppress=missingIncludeSystem --error-exitcode=1 proxy auth routing tls ws tools
	clang-format --dry-run --Werror $(C_FILES)

test-unit: $(UNIT_BIN)
	@rc=0; for t in $(UNIT_BIN); do echo "== $$t"; $$t || rc=1; done; exit $$rc

test-integration: $(BUILD)/preview-proxy $(BUILD)/proxyctl
	PROXY_BIN=$(CURDIR)/$(BUILD)/preview-proxy PROXYCTL_BIN=$(CURDIR)/$(BUILD)/proxyctl \
	  /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/integration

# Sanitizer build of the proxy and the unit tests, then every test against it.
# ASan keeps freed memory in a quarantine (256 MiB by default), which the RSS
# bounds of the backpressure tests would mistake for growth: keep it small.
# 8 MiB: a flood that frees more than that (the pipelined-404 test since
# answers are written at once, issue 13) shows ~1.5x the quarantine as RSS
# growth (measured: 12.2 MiB at 8, 23.6 at 16; the plain build grows 0.9).
test-san:
	ASAN_OPTIONS=quarantine_size_mb=8:detect_leaks=1 $(MAKE) SAN=1 all test-unit test-integration

check: test-deps
	$(MAKE) test-san

bench: all
	./bench/run.sh

# Installing and packaging (issue 14; packaging/README.md). Both programs go to
# sbin: they are administrators' tools, documented in man section 8. The
# configuration and logrotate files go to $(DESTDIR)/etc whatever PREFIX is, and
# an existing proxy.conf is never replaced. With PREFIX=/usr the unit goes to
# /lib/systemd/system, where Debian 12 wants it.
PREFIX  ?= /usr/local
VERSION ?= $(shell sed -n 's/.*PX_VERSION "\(.*\)"/\1/p' proxy/px.h)
SBINDIR  = $(PREFIX)/sbin
MANDIR   = $(PREFIX)/share/man
UNITDIR ?= $(patsubst /usr/lib/%,/lib/%,$(PREFIX)/lib/systemd/system)

install: all
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man8 \
	  $(DESTDIR)$(UNITDIR) $(DESTDIR)/etc/preview-proxy $(DESTDIR)/etc/logrotate.d
	install -m 755 $(BUILD)/preview-proxy $(BUILD)/proxyctl $(DESTDIR)$(SBINDIR)/
	install -m 644 packaging/man/preview-proxy.8 packaging/man/proxyctl.8 $(DESTDIR)$(MANDIR)/man8/
	install -m 644 packaging/man/proxy.conf.5 $(DESTDIR)$(MANDIR)/man5/
	sed 's|/usr/sbin/|$(SBINDIR)/|g' packaging/preview-proxy.service \
	  > $(DESTDIR)$(UNITDIR)/preview-proxy.service
	chmod 644 $(DESTDIR)$(UNITDIR)/preview-proxy.service
	install -m 644 packaging/preview-proxy.logrotate $(DESTDIR)/etc/logrotate.d/preview-proxy
	test -e $(DESTDIR)/etc/preview-proxy/proxy.conf || \
	  install -m 644 packaging/proxy.conf $(DESTDIR)/etc/preview-proxy/proxy.conf

# build/preview-proxy_$(VERSION)_ARCH.deb, with dpkg-deb alone (no network).
deb: all
	rm -rf $(BUILD)/deb
	$(MAKE) --no-print-directory install DESTDIR=$(CURDIR)/$(BUILD)/deb/debian/preview-proxy PREFIX=/usr
	./packaging/mkdeb.sh $(BUILD)/deb/debian/preview-proxy $(VERSION) $(BUILD)


# ---- fuzzing (fuzz/README.md) ----
# The drivers link the proxy's objects built once more by clang with libFuzzer's
# coverage hooks and ASan+UBSan, in their own directory: never build/ or build-san/.
FUZZ_CC      := clang-14
FUZZ_BUILD   := build-fuzz
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=undefined
FUZZ_CFLAGS  := -std=gnu11 -Wall -Wextra -Wshadow -g -O1 -I. -MMD -MP -fno-omit-frame-pointer \
                -fsanitize=fuzzer-no-link $(FUZZ_SAN)
FUZZ_SECONDS ?= 60
FUZZ_SMOKE_SECONDS ?= 10
FUZZ_SRC     := $(wildcard fuzz/fuzz_*.c)
FUZZ_TARGETS := $(FUZZ_SRC:fuzz/fuzz_%.c=%)
FUZZ_BIN     := $(FUZZ_TARGETS:%=$(FUZZ_BUILD)/fuzz_%)
FUZZ_LIB_OBJ := $(LIB_OBJ:$(BUILD)/obj/%=$(FUZZ_BUILD)/obj/%)
# (The pattern rule below would otherwise treat these objects as intermediate and delete them.)
.SECONDARY: $(FUZZ_LIB_OBJ)

$(FUZZ_BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) $(PKG_CFLAGS) -Werror -c $< -o $@

$(FUZZ_BUILD)/fuzz_%: fuzz/fuzz_%.c $(FUZZ_LIB_OBJ)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer $(PKG_CFLAGS) -Werror -o $@ $< $(FUZZ_LIB_OBJ) \
	  $(PKG_LIBS)

fuzz-deps:
	@./scripts/apt-install.sh $(FUZZ_PKGS)

fuzz-build: fuzz-deps
	$(MAKE) $(FUZZ_BIN)

# Each driver for FUZZ_SECONDS, one after the other, each one in-process fuzzer on one core.
fuzz: fuzz-build
	@./fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_SECONDS) $(FUZZ_TARGETS)

# What `make test` runs: every driver briefly; any crash, leak or timeout fails.
fuzz-smoke: fuzz-build
	@./fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_SMOKE_SECONDS) $(FUZZ_TARGETS)

clean:
	rm -rf build build-san build-fuzz

-include $(PROXY_OBJ:.o=.d) $(BUILD)/obj/tools/proxyctl.d $(FUZZ_LIB_OBJ:.o=.d) \
         $(FUZZ_BIN:%=%.d)
