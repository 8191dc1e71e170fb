"""The corpus of the differential framing tests (test_differential.py):
malformed or ambiguous HTTP/1.1 requests, generated from families.

A case is the raw bytes a client sends on one fresh connection, with
placeholders filled in per run:
    @H@  the Host the proxy routes to the recording upstream
    @P@  a path prefix unique to the case ("/dt-0042")
    @M@  the same marker without the slash ("dt-0042"), also sent as X-Dt
and the requests its sender meant, in order: (method, target, body). The
target is what an origin should see (the path of an absolute-form target).
Whatever a proxy forwards for the case must be a prefix of that list, byte for
byte in method, target and body: anything else means two parsers framed the
bytes differently.

Each base case also runs with a plain GET pipelined after it ("+next"),
unless it is marked alone (its bytes never end, or the follow-up would only
be read as its body).
"""

CRLF = "\r\n"
HOST = "Host: @H@"
XDT = "X-Dt: @M@"
NEXT = "GET @P@/next HTTP/1.1\r\nHost: @H@\r\nX-Dt: @M@\r\n\r\n"
BODY = b"hello"
CHUNKED_BODY = b"5\r\nhello\r\n0\r\n\r\n"


class Case:
    def __init__(self, family, name, data, intended, alone=False, head=False, note=""):
        self.family = family
        self.name = f"{family}.{name}"
        self.data = data if isinstance(data, bytes) else data.encode("latin-1")
        self.intended = list(intended)
        self.alone = alone
        self.head = head            # the first request is HEAD (no response body)
        self.note = note

    def fill(self, marker, host):
        """The bytes to send and the intended requests, for one run."""
        def sub(b):
            b = (b.replace(b"@P@", b"/" + marker.encode()).replace(b"@M@", marker.encode())
                 .replace(b"@H@", host.encode()))
            if b"@SLEN" in b:  # lengths of the smuggled request, once filled in
                n = len(sub(SMUGGLED.encode()))
                b = (b.replace(b"@SLEN5@", b"%d" % (n + 5)).replace(b"@SLENX@", b"%x" % n)
                     .replace(b"@SLEN@", b"%d" % n))
            return b
        intended = [(m, sub(t.encode("latin-1")).decode("latin-1"), sub(b))
                    for m, t, b in self.intended]
        return sub(self.data), intended


def msg(start, *fields, body=b"", host=True, eol=CRLF):
    """A request: start line, Host and X-Dt (unless host=False), fields, body."""
    lines = [start] + ([HOST] if host else []) + [XDT] + list(fields)
    head = eol.join(lines) + eol + eol
    return head.encode("latin-1") + (body if isinstance(body, bytes) else body.encode("latin-1"))


def post(*fields, body=BODY, target="@P@/a", method="POST", version="HTTP/1.1", host=True):
    return msg(f"{method} {target} {version}", *fields, body=body, host=host)


def get(*fields, target="@P@/a", version="HTTP/1.1", host=True, method="GET"):
    return msg(f"{method} {target} {version}", *fields, host=host)


def P(body=BODY, target="@P@/a", method="POST"):
    """The intended request list of one request."""
    return [(method, target, body)]


G = [("GET", "@P@/a", b"")]
SMUGGLED = "GET @P@/smuggled HTTP/1.1\r\nHost: @H@\r\nX-Dt: @M@\r\n\r\n"


def cl_cases():
    f = "cl"
    yield Case(f, "plain", post("Content-Length: 5"), P())
    yield Case(f, "zero_get", get("Content-Length: 0"), G)
    yield Case(f, "get_with_body", get("Content-Length: 5") + BODY, [("GET", "@P@/a", BODY)])
    yield Case(f, "dup_same", post("Content-Length: 5", "Content-Length: 5"), P())
    yield Case(f, "dup_diff", post("Content-Length: 5", "Content-Length: 6", body=b"hello!"),
               P(b"hello"))
    yield Case(f, "dup_diff_rev", post("Content-Length: 6", "Content-Length: 5", body=b"hello!"),
               P(b"hello!"))
    yield Case(f, "list_same", post("Content-Length: 5, 5"), P())
    yield Case(f, "list_diff", post("Content-Length: 5, 6", body=b"hello!"), P())
    yield Case(f, "list_trailing_comma", post("Content-Length: 5,"), P())
    yield Case(f, "dup_zero_and_len", post("Content-Length: 0", "Content-Length: 5"), P(b""))
    for name, v in [("plus", "+5"), ("minus", "-5"), ("leading_zeros", "005"),
                    ("many_zeros", "0000000000000000005"), ("hex", "0x5"), ("hex_upper", "0X5"),
                    ("float", "5.0"), ("exp", "5e0"), ("space_inside", "5 5"),
                    ("tab_before", "\t5"), ("tab_after", "5\t"), ("space_after", "5 "),
                    ("empty", ""), ("alpha", "five"), ("trailing_alpha", "5x"),
                    ("huge", "99999999999999999999"), ("max_int64", "9223372036854775807"),
                    ("underscore_digits", "5_0"), ("quoted", '"5"'), ("vtab", "5\x0b"),
                    ("formfeed", "\x0c5"), ("nbsp", "5\xa0"), ("fullwidth_digit", "\xef\xbc\x95")]:
        yield Case(f, name, post(f"Content-Length: {v}"), P(), alone=name in ("huge", "max_int64"))
    yield Case(f, "name_upper", post("CONTENT-LENGTH: 5"), P())
    yield Case(f, "name_underscore", post("Content_Length: 5"), P(b""),
               note="not Content-Length: the body is the next request")
    yield Case(f, "name_space_before_colon", post("Content-Length : 5"), P())
    yield Case(f, "name_tab_before_colon", post("Content-Length\t: 5"), P())
    yield Case(f, "name_leading_space", post("X-A: 1", " Content-Length: 5"), P())
    yield Case(f, "obs_fold_value", post("Content-Length:", " 5"), P())
    yield Case(f, "obs_fold_after", post("Content-Length: 5", " 6", body=b"hello!"), P())
    yield Case(f, "body_longer", post("Content-Length: 3"), P(b"hel"),
               note="'lo' is read as the next request")
    yield Case(f, "body_shorter", post("Content-Length: 10"), P(b"hello"), alone=True)
    yield Case(f, "body_is_request", post("Content-Length: @SLEN@", body=SMUGGLED),
               P(SMUGGLED.encode()), note="a request inside a body")
    yield Case(f, "zero_then_request", post("Content-Length: 0", body=SMUGGLED),
               [("POST", "@P@/a", b""), ("GET", "@P@/smuggled", b"")], alone=True)
    yield Case(f, "http10", post("Content-Length: 5", version="HTTP/1.0"), P())
    yield Case(f, "head_with_cl", get("Content-Length: 0", method="HEAD"),
               [("HEAD", "@P@/a", b"")], head=True)


TE_VALUES = [
    ("lower", "chunked", True), ("upper", "CHUNKED", True), ("mixed", "ChUnKeD", True),
    ("trailing_space", "chunked ", True), ("leading_tab", "\tchunked", True),
    ("trailing_tab", "chunked\t", True), ("twice_list", "chunked, chunked", False),
    ("identity_chunked", "identity, chunked", False), ("gzip_chunked", "gzip, chunked", False),
    ("chunked_gzip", "chunked, gzip", False), ("chunked_identity", "chunked, identity", False),
    ("identity", "identity", False), ("gzip", "gzip", False), ("xchunked", "xchunked", False),
    ("chunkedx", "chunkedx", False), ("chunk", "chunk", False), ("param", "chunked;q=1", False),
    ("leading_comma", ",chunked", False), ("trailing_comma", "chunked,", False),
    ("empty", "", False), ("quoted", '"chunked"', False), ("vtab", "chunked\x0b", False),
    ("formfeed", "\x0cchunked", False), ("nul", "chunked\x00", False),
    ("high_byte", "chunked\xff", False), ("space_inside", "chun ked", False),
    ("comma_space_list", "gzip ,chunked", False), ("deflate_chunked", "deflate, chunked", False),
]


def te_cases():
    f = "te"
    for name, v, _ in TE_VALUES:
        yield Case(f, name, post(f"Transfer-Encoding: {v}", body=CHUNKED_BODY), P())
    yield Case(f, "dup_chunked", post("Transfer-Encoding: chunked", "Transfer-Encoding: chunked",
                                      body=CHUNKED_BODY), P())
    yield Case(f, "dup_identity_chunked", post("Transfer-Encoding: identity",
                                               "Transfer-Encoding: chunked", body=CHUNKED_BODY), P())
    yield Case(f, "dup_chunked_identity", post("Transfer-Encoding: chunked",
                                               "Transfer-Encoding: identity", body=CHUNKED_BODY), P())
    yield Case(f, "dup_chunked_x", post("Transfer-Encoding: chunked", "Transfer-Encoding: x",
                                        body=CHUNKED_BODY), P())
    yield Case(f, "obs_fold", post("Transfer-Encoding:", " chunked", body=CHUNKED_BODY), P())
    yield Case(f, "obs_fold_tab", post("Transfer-Encoding: gzip,", "\tchunked",
                                       body=CHUNKED_BODY), P())
    yield Case(f, "space_before_colon", post("Transfer-Encoding : chunked", body=CHUNKED_BODY), P())
    yield Case(f, "tab_before_colon", post("Transfer-Encoding\t: chunked", body=CHUNKED_BODY), P())
    yield Case(f, "underscore_name", post("Transfer_Encoding: chunked", body=CHUNKED_BODY),
               P(b""), note="not Transfer-Encoding: the body is the next request")
    yield Case(f, "leading_space_name", post("X-A: 1", " Transfer-Encoding: chunked",
                                             body=CHUNKED_BODY), P())
    yield Case(f, "name_upper", post("TRANSFER-ENCODING: chunked", body=CHUNKED_BODY), P())
    yield Case(f, "nul_in_name", post("Transfer-Encoding\x00: chunked", body=CHUNKED_BODY), P())
    yield Case(f, "lf_in_name", post("X-A: 1\nTransfer-Encoding: chunked", body=CHUNKED_BODY), P())
    yield Case(f, "http10", post("Transfer-Encoding: chunked", version="HTTP/1.0",
                                 body=CHUNKED_BODY), P())
    yield Case(f, "get_chunked", get("Transfer-Encoding: chunked") + CHUNKED_BODY,
               [("GET", "@P@/a", b"hello")])
    yield Case(f, "header_te_trailers", post("TE: trailers", "Content-Length: 5"), P())


def clte_cases():
    """CL and TE together, and the classic CL.TE / TE.CL / TE.TE desyncs."""
    f = "clte"
    yield Case(f, "cl_te", post("Content-Length: 5", "Transfer-Encoding: chunked",
                                body=b"0\r\n\r\n"), P(b""))
    yield Case(f, "te_cl", post("Transfer-Encoding: chunked", "Content-Length: 5",
                                body=b"0\r\n\r\n"), P(b""))
    yield Case(f, "cl_te_smuggle", post("Content-Length: 13", "Transfer-Encoding: chunked",
                                        body=b"0\r\n\r\nSMUGGLED"), P(b""), alone=True)
    yield Case(f, "cl_te_smuggle_request", post(
        "Content-Length: @SLEN5@", "Transfer-Encoding: chunked",
        body=("0\r\n\r\n" + SMUGGLED).encode()), P(b"") + [("GET", "@P@/smuggled", b"")])
    yield Case(f, "te_cl_smuggle", post("Content-Length: 3", "Transfer-Encoding: chunked",
                                        body=b"8\r\nSMUGGLED\r\n0\r\n\r\n"), P(b"SMUGGLED"))
    yield Case(f, "te_cl_smuggle_request", post(
        "Content-Length: 4", "Transfer-Encoding: chunked",
        body=("@SLENX@\r\n" + SMUGGLED + "\r\n0\r\n\r\n").encode()),
        P(SMUGGLED.encode()))
    yield Case(f, "cl0_te", post("Content-Length: 0", "Transfer-Encoding: chunked",
                                 body=CHUNKED_BODY), P())
    yield Case(f, "te_identity_cl", post("Transfer-Encoding: identity", "Content-Length: 5"), P())
    yield Case(f, "te_xchunked_cl", post("Transfer-Encoding: xchunked", "Content-Length: 5"), P())
    yield Case(f, "te_space_colon_cl", post("Transfer-Encoding : chunked", "Content-Length: 5",
                                            body=b"0\r\n\r\n"), P(b""))
    yield Case(f, "te_folded_cl", post("Content-Length: 5", "Transfer-Encoding:", " chunked",
                                       body=b"0\r\n\r\n"), P(b""))
    yield Case(f, "te_tab_cl", post("Transfer-Encoding:\tchunked", "Content-Length: 5",
                                    body=b"0\r\n\r\n"), P(b""))
    yield Case(f, "te_gzip_chunked_cl", post("Transfer-Encoding: gzip, chunked",
                                             "Content-Length: 5", body=b"0\r\n\r\n"), P(b""))
    yield Case(f, "te_chunked_gzip_cl", post("Transfer-Encoding: chunked, gzip",
                                             "Content-Length: 5"), P())
    yield Case(f, "te_dup_obfuscated_cl", post("Transfer-Encoding: chunked",
                                               "Transfer-Encoding: x", "Content-Length: 5",
                                               body=b"0\r\n\r\n"), P(b""))
    yield Case(f, "te_cl_http10", post("Transfer-Encoding: chunked", "Content-Length: 5",
                                       version="HTTP/1.0", body=b"0\r\n\r\n"), P(b""))
    yield Case(f, "te_underscore_cl", post("Transfer_Encoding: chunked", "Content-Length: 5",
                                           body=b"0\r\n\r\n"), P(b"0\r\n\r\n"))
    yield Case(f, "te_cl_dup", post("Transfer-Encoding: chunked", "Content-Length: 5",
                                    "Content-Length: 6", body=b"0\r\n\r\n"), P(b""))


def chunk(line, rest=b"hello\r\n0\r\n\r\n"):
    return post("Transfer-Encoding: chunked", body=line.encode("latin-1") + rest)


def chunk_cases():
    f = "chunk"
    for name, line in [("leading_zeros", "005\r\n"), ("sixteen_digits", "0000000000000005\r\n"),
                       ("seventeen_digits", "00000000000000005\r\n"), ("hex_0x", "0x5\r\n"),
                       ("plus", "+5\r\n"), ("minus", "-5\r\n"), ("space_after", "5 \r\n"),
                       ("space_before", " 5\r\n"), ("tab_after", "5\t\r\n"),
                       ("ext", "5;ext\r\n"), ("ext_value", "5;ext=val\r\n"),
                       ("ext_quoted", '5;ext="quoted value"\r\n'),
                       ("ext_quoted_semicolon", '5;ext="a;b"\r\n'),
                       ("ext_bws", "5 ;ext\r\n"), ("ext_bws_after", "5; ext = v\r\n"),
                       ("ext_many", "5;a;b=1;c=\"x\"\r\n"), ("ext_empty", "5;\r\n"),
                       ("ext_no_name", "5;=x\r\n"), ("ext_no_value", "5;a=\r\n"),
                       ("ext_unterminated_quote", '5;a="x\r\n'),
                       ("ext_quoted_escape", '5;a="x\\"y"\r\n'),
                       ("ext_nul", "5;a\x00\r\n"), ("ext_del", "5;a\x7f\r\n"),
                       ("ext_high_byte", "5;a=\xff\r\n"), ("ext_ctl", "5;a\x01\r\n"),
                       ("ext_bare_cr", "5;a\rb\r\n"), ("ext_lf_in_quotes", '5;a="x\ny"\r\n'),
                       ("ext_long", "5;" + "a" * 5000 + "\r\n"),
                       ("size_nul", "5\x00\r\n"), ("size_bare_lf", "5\n"),
                       ("size_bare_cr", "5\rhello\r\n"), ("size_vtab", "5\x0b\r\n"),
                       ("underscore", "0_5\r\n"), ("empty_size", "\r\n")]:
        yield Case(f, name, chunk(line), P(), alone=name == "size_bare_cr")
    yield Case(f, "upper_hex", post("Transfer-Encoding: chunked",
                                    body=b"A\r\nhellohello\r\n0\r\n\r\n"), P(b"hellohello"))
    yield Case(f, "lower_hex", post("Transfer-Encoding: chunked",
                                    body=b"a\r\nhellohello\r\n0\r\n\r\n"), P(b"hellohello"))
    yield Case(f, "overflow", chunk("10000000000000005\r\n"), P(), alone=True)
    yield Case(f, "overflow_wrap", chunk("ffffffffffffffff5\r\n"), P(), alone=True)
    yield Case(f, "max_u64", chunk("ffffffffffffffff\r\n"), P(), alone=True)
    yield Case(f, "huge_but_fits", chunk("7fffffffffffffff\r\n"), P(), alone=True)
    yield Case(f, "two_pow_52", chunk("10000000000000\r\n"), P(), alone=True)
    yield Case(f, "two_pow_52_minus_1", chunk("fffffffffffff\r\n"), P(), alone=True)
    yield Case(f, "data_bare_lf", chunk("5\r\n", b"hello\n0\r\n\r\n"), P())
    yield Case(f, "data_no_crlf", chunk("5\r\n", b"hello0\r\n\r\n"), P())
    yield Case(f, "data_longer", chunk("5\r\n", b"helloXX\r\n0\r\n\r\n"), P())
    yield Case(f, "data_shorter", chunk("5\r\n", b"hel\r\n0\r\n\r\n"), P(), alone=True)
    yield Case(f, "data_cr_only", chunk("5\r\n", b"hello\r0\r\n\r\n"), P())
    yield Case(f, "last_double_zero", chunk("5\r\n", b"hello\r\n00\r\n\r\n"), P())
    yield Case(f, "last_ext", chunk("5\r\n", b"hello\r\n0;a=b\r\n\r\n"), P())
    yield Case(f, "last_bare_lf", chunk("5\r\n", b"hello\r\n0\n\n"), P())
    yield Case(f, "last_bare_lf_end", chunk("5\r\n", b"hello\r\n0\r\n\n"), P())
    yield Case(f, "last_space", chunk("5\r\n", b"hello\r\n0 \r\n\r\n"), P())
    yield Case(f, "many_chunks", post("Transfer-Encoding: chunked",
                                      body=b"1\r\nh\r\n1\r\ne\r\n3\r\nllo\r\n0\r\n\r\n"), P())
    yield Case(f, "zero_size_only", post("Transfer-Encoding: chunked", body=b"0\r\n\r\n"), P(b""))
    yield Case(f, "missing_last_chunk", chunk("5\r\n", b"hello\r\n"), P(), alone=True)
    yield Case(f, "missing_final_crlf", chunk("5\r\n", b"hello\r\n0\r\n"), P(), alone=True)
    yield Case(f, "request_as_trailer", chunk("5\r\n", b"hello\r\n0\r\n" + NEXT.encode()),
               P(), alone=True)
    yield Case(f, "extra_crlf_after", chunk("5\r\n", b"hello\r\n0\r\n\r\n\r\n"), P())
    for name, tr in [("plain", "X-T: 1"), ("content_length", "Content-Length: 5"),
                     ("transfer_encoding", "Transfer-Encoding: chunked"),
                     ("host", "Host: evil.example"), ("authorization", "X-Daytona-Authorization: x"),
                     ("obs_fold", "X-T: 1\r\n 2"), ("no_colon", "X-T"),
                     ("space_before_colon", "X-T : 1"), ("nul", "X-T: a\x00b"),
                     ("bare_lf", "X-T: 1\nX-U: 2"), ("empty_name", ": 1"),
                     ("bare_cr", "X-T: a\rb"), ("many", "\r\n".join(f"X-T{i}: {i}" for i in range(50))),
                     ("long", "X-T: " + "t" * 6000)]:
        yield Case(f, "trailer_" + name, chunk("5\r\n", b"hello\r\n0\r\n" + tr.encode("latin-1")
                                               + b"\r\n\r\n"), P())


def header_cases():
    f = "hdr"
    for name, line in [("space_before_colon", "X-A : v"), ("tab_before_colon", "X-A\t: v"),
                       ("host_space_before_colon", None),
                       ("obs_fold_space", "X-A: a\r\n b"), ("obs_fold_tab", "X-A: a\r\n\tb"),
                       ("obs_fold_empty", "X-A:\r\n b"), ("bare_cr_value", "X-A: a\rb"),
                       ("bare_cr_eol", "X-A: a\rX-B: b"), ("bare_lf_eol", "X-A: a\nX-B: b"),
                       ("nul_in_name", "X-\x00A: v"), ("nul_in_value", "X-A: a\x00b"),
                       ("nul_value_start", "X-A: \x00"), ("empty_name", ": v"),
                       ("only_colon", ":"), ("no_colon", "X-A"), ("space_in_name", "X A: v"),
                       ("paren_in_name", "X(A): v"), ("quote_in_name", 'X"A: v'),
                       ("slash_in_name", "X/A: v"), ("at_in_name", "X@A: v"),
                       ("bracket_in_name", "X[A]: v"), ("brace_in_name", "X{A}: v"),
                       ("equals_in_name", "X=A: v"), ("comma_in_name", "X,A: v"),
                       ("semicolon_in_name", "X;A: v"), ("backslash_in_name", "X\\A: v"),
                       ("question_in_name", "X?A: v"), ("high_byte_in_name", "X\xffA: v"),
                       ("del_in_name", "X\x7fA: v"), ("underscore_name", "X_A: v"),
                       ("ctl_value", "X-A: a\x01b"), ("vtab_value", "X-A: a\x0bb"),
                       ("formfeed_value", "X-A: a\x0cb"), ("esc_value", "X-A: a\x1bb"),
                       ("del_value", "X-A: a\x7fb"), ("obs_text_value", "X-A: caf\xe9"),
                       ("empty_value", "X-A:"), ("space_value", "X-A:   "),
                       ("tab_value", "X-A:\tv\t"), ("whitespace_line", "   "),
                       ("long_value_9k", "X-A: " + "v" * 9000),
                       ("long_value_60k", "X-A: " + "v" * 60000),
                       ("long_value_70k", "X-A: " + "v" * 70000),
                       ("long_name", "X-" + "n" * 9000 + ": v")]:
        if line is None:
            yield Case(f, name, msg("GET @P@/a HTTP/1.1", "Host : @H@", host=False), G)
            continue
        yield Case(f, name, get(line), G, alone=name == "bare_cr_eol")
    yield Case(f, "first_line_folded", msg("GET @P@/a HTTP/1.1", " X-A: v", HOST, host=False), G)
    yield Case(f, "all_bare_lf", msg("GET @P@/a HTTP/1.1", eol="\n"), G, alone=True)
    yield Case(f, "end_lf_crlf", get().replace(b"\r\n\r\n", b"\r\n\n\r\n"), G, alone=True)
    yield Case(f, "end_crlf_lf", get().replace(b"\r\n\r\n", b"\r\n\n"), G, alone=True)
    yield Case(f, "end_cr_cr", get().replace(b"\r\n\r\n", b"\r\n\r\r\n"), G, alone=True)
    yield Case(f, "request_line_bare_lf", get().replace(b"HTTP/1.1\r\n", b"HTTP/1.1\n", 1), G)
    yield Case(f, "headers_100", get(*[f"X-H{i}: {i}" for i in range(98)]), G)
    yield Case(f, "headers_101", get(*[f"X-H{i}: {i}" for i in range(99)]), G)
    yield Case(f, "headers_200", get(*[f"X-H{i}: {i}" for i in range(198)]), G)
    yield Case(f, "dup_connection", get("Connection: keep-alive", "Connection: close"), G)
    yield Case(f, "dup_xff", get("X-Forwarded-For: 1.2.3.4", "X-Forwarded-For: 5.6.7.8"), G)


def line_cases():
    f = "line"
    abs_p = "http://@H@@P@/a"
    for name, start, intended, alone in [
            ("absolute_form", f"GET {abs_p} HTTP/1.1", G, False),
            ("absolute_https", "GET https://@H@@P@/a HTTP/1.1", G, False),
            ("absolute_port", "GET http://@H@:80@P@/a HTTP/1.1", G, False),
            ("absolute_userinfo", "GET http://user:pw@@H@@P@/a HTTP/1.1", G, False),
            ("absolute_no_path", "GET http://@H@ HTTP/1.1", [("GET", "/", b"")], False),
            ("absolute_query_no_path", "GET http://@H@?q=@M@ HTTP/1.1",
             [("GET", "/?q=@M@", b"")], False),
            ("absolute_upper_scheme", "GET HTTP://@H@@P@/a HTTP/1.1", G, False),
            ("absolute_ftp", "GET ftp://@H@@P@/a HTTP/1.1", G, False),
            ("absolute_no_scheme", "GET //@H@@P@/a HTTP/1.1", [("GET", "//@H@@P@/a", b"")], False),
            ("authority_form_get", "GET @H@:80 HTTP/1.1", [("GET", "@H@:80", b"")], False),
            ("connect", "CONNECT @H@:443 HTTP/1.1", [("CONNECT", "@H@:443", b"")], False),
            ("asterisk_options", "OPTIONS * HTTP/1.1", [("OPTIONS", "*", b"")], False),
            ("asterisk_get", "GET * HTTP/1.1", [("GET", "*", b"")], False),
            ("lowercase_method", "get @P@/a HTTP/1.1", [("get", "@P@/a", b"")], False),
            ("mixed_case_method", "Get @P@/a HTTP/1.1", [("Get", "@P@/a", b"")], False),
            ("unknown_method", "FOO @P@/a HTTP/1.1", [("FOO", "@P@/a", b"")], False),
            ("token_method", "X-M.1 @P@/a HTTP/1.1", [("X-M.1", "@P@/a", b"")], False),
            ("bad_method_char", "G@T @P@/a HTTP/1.1", [("G@T", "@P@/a", b"")], False),
            ("long_method", "M" * 100 + " @P@/a HTTP/1.1", [("M" * 100, "@P@/a", b"")], False),
            ("double_space_1", "GET  @P@/a HTTP/1.1", G, False),
            ("double_space_2", "GET @P@/a  HTTP/1.1", G, False),
            ("trailing_space", "GET @P@/a HTTP/1.1 ", G, False),
            ("tab_separators", "GET\t@P@/a\tHTTP/1.1", G, False),
            ("leading_space", " GET @P@/a HTTP/1.1", G, False),
            ("space_in_target", "GET @P@/a b HTTP/1.1", [("GET", "@P@/a b", b"")], False),
            ("ctl_in_target", "GET @P@/a\x01b HTTP/1.1", [("GET", "@P@/a\x01b", b"")], False),
            ("del_in_target", "GET @P@/a\x7fb HTTP/1.1", [("GET", "@P@/a\x7fb", b"")], False),
            ("nul_in_target", "GET @P@/a\x00b HTTP/1.1", [("GET", "@P@/a\x00b", b"")], False),
            ("high_bytes_target", "GET @P@/caf\xe9 HTTP/1.1", [("GET", "@P@/caf\xe9", b"")], False),
            ("fragment_target", "GET @P@/a#frag HTTP/1.1", [("GET", "@P@/a#frag", b"")], False),
            ("backslash_target", "GET @P@\\a HTTP/1.1", [("GET", "@P@\\a", b"")], False),
            ("relative_target", "GET dt/@M@ HTTP/1.1", [("GET", "dt/@M@", b"")], False),
            ("http10", "GET @P@/a HTTP/1.0", G, False),
            ("http09", "GET @P@/a", G, True),
            ("http20", "GET @P@/a HTTP/2.0", G, False),
            ("http30", "GET @P@/a HTTP/3.0", G, False),
            ("http12", "GET @P@/a HTTP/1.2", G, False),
            ("http1_10", "GET @P@/a HTTP/1.10", G, False),
            ("http01_1", "GET @P@/a HTTP/01.1", G, False),
            ("http1", "GET @P@/a HTTP/1", G, False),
            ("lowercase_http", "GET @P@/a http/1.1", G, False),
            ("version_junk", "GET @P@/a HTTP/1.1x", G, False),
            ("version_space", "GET @P@/a HTTP/ 1.1", G, False),
            ("pri_preface", "PRI * HTTP/2.0", [], True),
            ("target_8k", "GET @P@/" + "a" * 8150 + " HTTP/1.1", [("GET", "@P@/" + "a" * 8150, b"")],
             False),
            ("target_9k", "GET @P@/" + "a" * 9000 + " HTTP/1.1", [("GET", "@P@/" + "a" * 9000, b"")],
             False),
            ("target_20k", "GET @P@/" + "a" * 20000 + " HTTP/1.1",
             [("GET", "@P@/" + "a" * 20000, b"")], False),
            ("dot_segment", "GET @P@/../a HTTP/1.1", [("GET", "@P@/../a", b"")], False)]:
        host = name not in ("http09",)
        yield Case(f, name, msg(start, host=host), intended, alone=alone)
    yield Case(f, "leading_crlf", b"\r\n" + get(), G)
    yield Case(f, "leading_lf", b"\n" + get(), G)
    yield Case(f, "http10_no_host", msg("GET @P@/a HTTP/1.0", host=False), G)


def host_cases():
    f = "host"
    for name, fields, intended in [
            ("missing", [], G), ("dup_same", [HOST, HOST], G),
            ("dup_diff", [HOST, "Host: other.example"], G),
            ("dup_diff_rev", ["Host: other.example", HOST], G),
            ("empty", ["Host:"], G), ("port_80", ["Host: @H@:80"], G),
            ("bad_port", ["Host: @H@:abc"], G), ("huge_port", ["Host: @H@:99999"], G),
            ("empty_port", ["Host: @H@:"], G), ("userinfo", ["Host: user@@H@"], G),
            ("with_path", ["Host: @H@/x"], G), ("space_inside", ["Host: @H@ x"], G),
            ("comma_list", ["Host: @H@, other.example"], G),
            ("trailing_dot", ["Host: @H@."], G), ("underscore", ["Host: a_b.example"], G),
            ("ipv6", ["Host: [::1]"], G), ("ipv6_bad", ["Host: [::1"], G),
            ("tab_inside", ["Host: @H@\tx"], G), ("nul", ["Host: @H@\x00"], G),
            ("percent", ["Host: %31@H@"], G), ("long", ["Host: " + "h" * 5000 + ".example"], G),
            ("obs_fold", ["Host:", " @H@"], G), ("name_lower", ["host: @H@"], G),
            ("name_upper", ["HOST: @H@"], G)]:
        yield Case(f, name, msg("GET @P@/a HTTP/1.1", *fields, host=False), intended)
    yield Case(f, "absolute_mismatch", msg("GET http://other.example@P@/a HTTP/1.1"), G)
    yield Case(f, "absolute_matches_other_host",
               msg("GET http://@H@@P@/a HTTP/1.1", "Host: other.example", host=False), G)
    yield Case(f, "absolute_no_host_header", msg("GET http://@H@@P@/a HTTP/1.1", host=False), G)
    yield Case(f, "absolute_empty_host_header",
               msg("GET http://@H@@P@/a HTTP/1.1", "Host:", host=False), G)


def semantics_cases():
    """Expect, Upgrade, Connection tricks."""
    f = "sem"
    yield Case(f, "expect_continue", post("Expect: 100-continue", "Content-Length: 5"), P())
    yield Case(f, "expect_continue_upper", post("Expect: 100-CONTINUE", "Content-Length: 5"), P())
    yield Case(f, "expect_continue_no_body", get("Expect: 100-continue"), G)
    yield Case(f, "expect_continue_chunked", post("Expect: 100-continue",
                                                  "Transfer-Encoding: chunked",
                                                  body=CHUNKED_BODY), P())
    yield Case(f, "expect_unknown", post("Expect: 200-ok", "Content-Length: 5"), P())
    yield Case(f, "expect_http10", post("Expect: 100-continue", "Content-Length: 5",
                                        version="HTTP/1.0"), P())
    yield Case(f, "connection_close", get("Connection: close"), G)
    yield Case(f, "connection_close_body", post("Connection: close", "Content-Length: 5"), P())
    yield Case(f, "http10_keepalive", get("Connection: keep-alive", version="HTTP/1.0"), G)
    yield Case(f, "connection_content_length", post("Connection: Content-Length",
                                                    "Content-Length: 5"), P())
    yield Case(f, "connection_transfer_encoding", post("Connection: Transfer-Encoding",
                                                       "Transfer-Encoding: chunked",
                                                       body=CHUNKED_BODY), P())
    yield Case(f, "connection_host", get("Connection: Host"), G)
    yield Case(f, "connection_x_dt", get("Connection: X-A", "X-A: 1"), G)
    yield Case(f, "connection_garbage", get("Connection: \x01"), G)
    yield Case(f, "websocket_upgrade", get("Connection: Upgrade", "Upgrade: websocket",
                                           "Sec-WebSocket-Version: 13",
                                           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="), G)
    yield Case(f, "websocket_post_body", post("Connection: Upgrade", "Upgrade: websocket",
                                              "Sec-WebSocket-Version: 13",
                                              "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                                              "Content-Length: 5"), P())
    yield Case(f, "h2c_upgrade", get("Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c",
                                     "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA"), G)
    yield Case(f, "upgrade_without_connection", get("Upgrade: websocket"), G)
    yield Case(f, "connection_upgrade_only", get("Connection: Upgrade"), G)
    yield Case(f, "proxy_connection", get("Proxy-Connection: keep-alive"), G)
    yield Case(f, "keep_alive_header", get("Keep-Alive: timeout=5"), G)
    yield Case(f, "max_forwards", get("Max-Forwards: 0"), G)
    yield Case(f, "trace", get(method="TRACE"), [("TRACE", "@P@/a", b"")])
    yield Case(f, "head", get(method="HEAD"), [("HEAD", "@P@/a", b"")], head=True)
    yield Case(f, "head_cl_body", post("Content-Length: 5", method="HEAD"),
               [("HEAD", "@P@/a", BODY)], head=True)
    yield Case(f, "options", get(method="OPTIONS"), [("OPTIONS", "@P@/a", b"")])
    yield Case(f, "delete_body", post("Content-Length: 5", method="DELETE"), P(method="DELETE"))


def pipeline_cases():
    f = "pipe"
    yield Case(f, "two_gets", get() + NEXT.encode(), G + [("GET", "@P@/next", b"")], alone=True)
    yield Case(f, "post_then_get", post("Content-Length: 5") + NEXT.encode(),
               P() + [("GET", "@P@/next", b"")], alone=True)
    yield Case(f, "chunked_then_get", post("Transfer-Encoding: chunked", body=CHUNKED_BODY)
               + NEXT.encode(), P() + [("GET", "@P@/next", b"")], alone=True)
    yield Case(f, "three", get() + NEXT.encode() + NEXT.replace("/next", "/third").encode(),
               G + [("GET", "@P@/next", b""), ("GET", "@P@/third", b"")], alone=True)
    yield Case(f, "crlf_between", get() + b"\r\n" + NEXT.encode(),
               G + [("GET", "@P@/next", b"")], alone=True)


FAMILIES = (cl_cases, te_cases, clte_cases, chunk_cases, header_cases, line_cases, host_cases,
            semantics_cases, pipeline_cases)


def all_cases():
    """Every case, each base case also with a pipelined GET after it."""
    out = []
    for fam in FAMILIES:
        for c in fam():
            out.append(c)
            if not c.alone:
                out.append(Case(c.family, c.name.split(".", 1)[1] + "+next", c.data + NEXT.encode(),
                                c.intended + [("GET", "@P@/next", b"")], head=c.head, note=c.note))
    names = [c.name for c in out]
    assert len(names) == len(set(names)), "duplicate case names"
    return out
